"""The one test that runs the torch.compile fast path (a compile per shape is too slow for properties)."""

import math
import warnings

import pytest
import torch

from entropymix import EntropyMix
from entropymix import functional as F
from strategies import random_probs

# Torch with size-oblivious backed symbols (2.6+) compiles one graph for every shape. Older torch
# (the 2.4 floor) has dynamic=True alone, which specialises a batch of 1 and equal sizes: up to
# two more graphs, as documented in functional.set_compile.
from torch.fx.experimental import _config as fx_config  # noqa: E402
EXTRA_GRAPHS = 0 if hasattr(fx_config, "backed_size_oblivious") and hasattr(fx_config, "use_duck_shape") else 2


def test_compiled_entropy_matches_eager_and_gives_the_same_plan():
    g = torch.Generator().manual_seed(0)
    probs = [random_probs(g, (2, 21, 45, 47)) for _ in range(2)]
    probs[0][:, :, 0, 0] = 0.0
    probs[0][:, 0, 0, 0] = 1.0  # a one-hot pixel: 0 log 0 must be 0 on the fast path too
    views = [torch.rand(2, 3, 45, 47, generator=g) for _ in range(2)]
    eager_h = F.entropy(probs[0])
    eager_z = F.entropy_from_logits(probs[1].log())
    _, eager_plan = EntropyMix(4)(views, probs=probs)
    F.set_compile(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
            fast_h = F.entropy(probs[0])
            fast_z = F.entropy_from_logits(probs[1].log())
            _, fast_plan = EntropyMix(4)(views, probs=probs)
            half = F.entropy(probs[0].to(torch.bfloat16))
    finally:
        F.set_compile(False)
    torch.testing.assert_close(fast_h, eager_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_z, eager_z, rtol=1e-5, atol=1e-5)
    assert fast_h[:, 0, 0].eq(0).all() and half.dtype == torch.float32
    assert torch.equal(fast_plan.index, eager_plan.index)


def test_compiled_and_eager_entropy_agree_on_edge_values():
    """One shape, one compilation per kernel: one-hot, uniform, zeros, negative, NaN, huge and -inf
    logits, half precision; checks off, so every input reaches the kernels."""
    K, shape = 5, (2, 5, 6, 7)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(shape, generator=g).softmax(1)
    probs = {
        "one-hot": torch.nn.functional.one_hot(torch.randint(0, K, (2, 6, 7), generator=g), K).permute(0, 3, 1, 2).float(),
        "uniform": torch.full(shape, 1 / K),
        "zeros": torch.zeros(shape),
        "negative": base - 0.3,
        "nan": base.masked_fill(base > 0.25, float("nan")),
        "inf": base.masked_fill(base > 0.25, float("inf")),
        "bfloat16": base.bfloat16(),
        "float16": base.half(),
    }
    logits = {
        "huge": torch.randn(shape, generator=g) * 1e4,
        "-inf class": torch.randn(shape, generator=g).index_fill(1, torch.tensor([0, 2]), -float("inf")),
        "half": torch.randn(shape, generator=g).half() * 100,
    }
    eager = {k: F.entropy(p, check_values=False) for k, p in probs.items()}
    eager_z = {k: F.entropy_from_logits(z, check_values=False) for k, z in logits.items()}
    F.set_compile(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            fast = {k: F.entropy(p, check_values=False) for k, p in probs.items()}
            fast_z = {k: F.entropy_from_logits(z, check_values=False) for k, z in logits.items()}
    finally:
        F.set_compile(False)
    for k in probs:
        torch.testing.assert_close(fast[k], eager[k], rtol=1e-5, atol=1e-5, equal_nan=True, msg=k)
    for k in logits:
        torch.testing.assert_close(fast_z[k], eager_z[k], rtol=1e-5, atol=1e-5, equal_nan=True, msg=k)
        assert torch.isfinite(fast_z[k]).all(), k
    assert fast["one-hot"].eq(0).all() and fast["zeros"].eq(0).all()
    torch.testing.assert_close(fast["uniform"], torch.full((2, 6, 7), math.log(K)))


def _fresh_compile_state():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    F._COMPILED.clear()


def test_one_compilation_serves_every_crop_and_batch_size(capfd):
    """Crops 257^2, 321^2, 385 x 417 (not square: no duck sizing) and batches 1 and 5 (no 0/1
    specialisation): one graph per kernel, and nothing printed (library messages are warnings)."""
    _fresh_compile_state()
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 21, 257, 257), (8, 21, 321, 321), (8, 21, 385, 417), (1, 21, 321, 321), (5, 19, 100, 60)]
    F.set_compile(True)
    try:
        for shape in shapes:
            p = torch.rand(shape, generator=g).softmax(1)
            F.entropy(p)  # checks on: entropy and checks from the same kernel
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        F.set_compile(False)
    assert graphs <= 1 + EXTRA_GRAPHS, dict(torch._dynamo.utils.counters["stats"])
    assert "entropymix" not in capfd.readouterr().err


def test_warmup_compiles_ahead_and_the_fused_path_matches_eager():
    """After warmup() no call compiles; on a handful of shapes the fused path (checks on) gives the
    eager entropies, the same plans, and the same errors."""
    _fresh_compile_state()
    F.set_compile(True)
    try:
        F.warmup("cpu", dtypes=(torch.float32,))
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        g = torch.Generator().manual_seed(1)
        for B, K, h, w, grid in [(2, 21, 33, 47, (4, 4)), (1, 5, 9, 9, (3, 2)), (3, 2, 64, 17, (8, 1))]:
            probs = [torch.rand(B, K, h, w, generator=g).pow(4).softmax(1) for _ in range(3)]
            views = [torch.rand(B, 3, h, w, generator=g) for _ in range(3)]
            valid = [torch.where(torch.rand(B, h, w, generator=g) < 0.7, 0, 255) for _ in range(3)]
            for select in ("max", "sample"):
                for key, maps in (("probs", probs), ("logits", [p.log() for p in probs])):
                    fast = EntropyMix(grid, select=select)(views, valid=valid, generator=torch.Generator().manual_seed(0),
                                                           **{key: maps})
                    F.set_compile(False)
                    slow = EntropyMix(grid, select=select)(views, valid=valid, generator=torch.Generator().manual_seed(0),
                                                           **{key: maps})
                    F.set_compile(True)
                    assert torch.equal(fast[1].index, slow[1].index) and torch.equal(fast[0], slow[0])
            torch.testing.assert_close(F.entropy(probs[0]), F.torch.special.entr(probs[0]).sum(1))
            bad = probs[1].clone()
            bad[:, 0, 0, 0] = -0.5
            bad[:, 1, 0, 0] += 0.5  # still sums to 1
            with pytest.raises(ValueError, match=r"probs\[1\] must be probabilities"):
                EntropyMix(grid)(views, probs=[probs[0], bad, probs[2]])
            with pytest.raises(ValueError, match=r"probs\[2\] must be probabilities: .*within 0.02"):
                EntropyMix(grid)(views, probs=[probs[0], probs[1], probs[2] * 1.05])  # off the simplex
            with pytest.raises(ValueError, match=r"logits\[0\] contains NaN or \+inf"):
                EntropyMix(grid)(views, logits=[bad.log(), probs[1].log(), probs[2].log()])
            bad[:, :, 0, 0] = float("nan")
            EntropyMix(grid)(views, probs=[probs[0], bad, probs[2]],  # ignored there: accepted
                             valid=[None, torch.ones(B, h, w, dtype=torch.bool).index_fill(1, torch.tensor([0]), False),
                                    None])
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= before + EXTRA_GRAPHS
    finally:
        F.set_compile(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernel_on_cuda_matches_eager_and_gives_the_same_plan():
    """On CUDA the opt-in kernel is Triton code: the same entropies, plans and errors as eager."""
    g = torch.Generator().manual_seed(0)
    probs = [random_probs(g, (4, 21, 65, 67)).cuda() for _ in range(2)]
    views = [torch.rand(4, 3, 65, 67, generator=g).cuda() for _ in range(2)]
    eager = F.entropy(probs[0]), F.entropy_from_logits(probs[1].log())
    _, eager_plan = EntropyMix(4, select="sample")(views, probs=probs, generator=torch.Generator().manual_seed(0))
    previous = F.set_compile(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            fast = F.entropy(probs[0]), F.entropy_from_logits(probs[1].log())
            _, fast_plan = EntropyMix(4, select="sample")(views, probs=probs, generator=torch.Generator().manual_seed(0))
            half = F.entropy(probs[0].half())
            with pytest.raises(ValueError, match=r"probs\[1\] must be probabilities"):
                EntropyMix(4)(views, probs=[probs[0], probs[1] * 1.1])
    finally:
        F.set_compile(previous)
    for a, b in zip(fast, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast_plan.index, eager_plan.index) and half.dtype == torch.float32
