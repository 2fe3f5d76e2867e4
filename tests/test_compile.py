"""The one test that runs the torch.compile fast path (a compile per shape is too slow for properties)."""

import warnings

import torch

from entropymix import EntropyMix
from entropymix import functional as F
from strategies import random_probs


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
