import math
import pickle
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from entropymix import ClassMix, CutMix, EntropyMix, MixPlan
from entropymix import functional as F
from conftest import AUTOCAST, DEVICES, requires_cuda
from strategies import FLOAT_DTYPES, naive_cells, random_probs, sizes_and_grid

MODES = ["max", "min", "sample", "random"]


def make_batch(seed, V, B, C, H, W, K, prob_size=None, dtype=torch.float32, device="cpu"):
    """V views whose channel 0 encodes the view id (so provenance is visible in the output), drawn on
    the CPU (the same values on every device) and moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    views = []
    for v in range(V):
        x = torch.randn(B, C, H, W, generator=g)
        x[:, 0] = v
        views.append(x.to(device=device, dtype=dtype))
    h, w = prob_size or (H, W)
    probs = [random_probs(g, (B, K, h, w)).to(device) for _ in range(V)]
    return views, probs, g


def check_conservation(mixed, views, plan):
    """Every output pixel equals, bit for bit, the same pixel of the view the plan names."""
    B, C, H, W = mixed.shape
    gh, gw = plan.grid
    rows, cols = naive_cells(H, gh), naive_cells(W, gw)
    src = plan.index[:, rows][:, :, cols]
    assert src.min() >= 0 and src.max() < len(views)
    ref = torch.stack(views).gather(0, src[None, :, None].expand(1, B, C, H, W))[0]
    assert torch.equal(mixed, ref)
    assert torch.equal(plan.source_map(), src)


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 4), B=st.integers(1, 3), C=st.integers(1, 3), sg=sizes_and_grid(max_side=33),
       K=st.integers(2, 6), select=st.sampled_from(MODES), p=st.sampled_from([0.0, 0.5, 1.0]),
       prob_scale=st.sampled_from([1, 2]), dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, C=3, sg=((321, 321), (4, 4)), K=21, select="max", p=1.0, prob_scale=1,
         dtype=torch.float32, seed=0)
@example(V=2, B=1, C=1, sg=((1, 1), (1, 1)), K=2, select="max", p=1.0, prob_scale=1, dtype=torch.float32, seed=0)
@example(V=3, B=2, C=3, sg=((321, 321), (4, 4)), K=21, select="sample", p=0.5, prob_scale=2,
         dtype=torch.bfloat16, seed=0)
def test_entropymix_conserves_pixels_and_selects_by_entropy(V, B, C, sg, K, select, p, prob_scale, dtype, seed, device):
    (H, W), grid = sg
    # probabilities at the image resolution or a coarser one (the teacher's output stride)
    ph, pw = max(grid[0], H // prob_scale), max(grid[1], W // prob_scale)
    views, probs, g = make_batch(seed, V, B, C, H, W, K, (ph, pw), dtype, device=device)
    before = [x.clone() for x in views + probs]
    mixer = EntropyMix(grid, select=select, p=p)
    mixed, plan = mixer(views, probs=probs, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(views + probs, before))  # nothing in place
    assert mixed.shape == views[0].shape and mixed.dtype == dtype
    assert plan.index.shape == (B, *grid) and plan.num_views == V and plan.size == (H, W)
    check_conservation(mixed, views, plan)
    if p == 0.0:
        assert (plan.index == 0).all() and torch.equal(mixed, views[0])
    if select in ("max", "min") and p == 1.0:
        E = torch.stack([F.patch_entropy(F.entropy(q), grid) for q in probs])
        chosen = E.gather(0, plan.index[None])[0]
        best = E.max(0).values if select == "max" else E.min(0).values
        assert torch.equal(chosen, best)


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), K=st.integers(2, 5),
       select=st.sampled_from(["max", "min", "sample"]), seed=st.integers(0, 2**31 - 1))
def test_empty_cells_are_never_preferred(V, B, sg, K, select, seed, device):
    (H, W), grid = sg
    views, probs, g = make_batch(seed, V, B, 1, H, W, K, device=device)
    valid = [(torch.rand(B, H, W, generator=g) < q).to(device) for q in torch.rand(V, generator=g).tolist()]
    valid[0][:] = False  # view 0 has no valid pixel at all: it must lose wherever another view has one
    _, plan = EntropyMix(grid, select=select)(views, probs=probs, valid=valid,
                                               generator=torch.Generator().manual_seed(seed))
    _, nonempty = zip(*[F.patch_entropy(F.entropy(q), grid, m, return_valid=True) for q, m in zip(probs, valid)])
    nonempty = torch.stack(nonempty)
    chosen_nonempty = nonempty.gather(0, plan.index[None])[0]
    assert chosen_nonempty[nonempty.any(0)].all()


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=40), K=st.integers(2, 5),
       select=st.sampled_from(MODES), feat_div=st.sampled_from([1, 4, 8]), seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, sg=((321, 321), (4, 4)), K=21, select="max", feat_div=8, seed=0)
def test_plan_applied_to_labels_confidences_and_features_matches_the_image(V, B, sg, K, select, feat_div, seed, device):
    (H, W), grid = sg
    views, probs, g = make_batch(seed, V, B, 2, H, W, K, device=device)
    mixed, plan = EntropyMix(grid, select=select)(views, probs=probs, generator=torch.Generator().manual_seed(seed))
    labels = [q.argmax(1) for q in probs]                              # int64 (B, H, W)
    conf = [q.max(1).values.half() for q in probs]                     # float16 (B, H, W)
    ignore = [torch.full((B, H, W), 255 * (v % 2), dtype=torch.uint8, device=device) for v in range(V)]
    y_mixed, c_mixed, i_mixed = plan.apply(labels), plan.apply(conf), plan.apply(ignore)
    src = mixed[:, 0].long()  # channel 0 of view v is v
    assert torch.equal(y_mixed, torch.stack(labels).gather(0, src[None])[0])
    assert torch.equal(c_mixed, torch.stack(conf).gather(0, src[None])[0])
    assert torch.equal(i_mixed, torch.stack(ignore).gather(0, src[None])[0])
    # features at a coarser resolution carry the view id too: the plan maps them by the same rule
    fh, fw = max(1, H // feat_div), max(1, W // feat_div)
    feats = [torch.full((B, 4, fh, fw), float(v), device=device) for v in range(V)]
    f_mixed = plan.apply(feats)
    assert torch.equal(f_mixed[:, 0].long(), plan.source_map((fh, fw)))


@given(select=st.sampled_from(MODES), p=st.sampled_from([0.3, 1.0]), seed=st.integers(0, 2**31 - 1),
       use_logits=st.booleans())
def test_same_generator_seed_gives_the_same_plan(select, p, seed, use_logits):
    views, probs, _ = make_batch(seed, 3, 4, 3, 20, 23, 5)
    mixer = EntropyMix((3, 5), select=select, p=p)
    kw = {"logits": [q.log() for q in probs]} if use_logits else {"probs": probs}
    a, plan_a = mixer(views, **kw, generator=torch.Generator().manual_seed(seed))
    b, plan_b = mixer(views, **kw, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plan_a.index, plan_b.index) and torch.equal(a, b)


def test_logits_and_probs_give_the_same_plan():
    views, probs, _ = make_batch(0, 2, 4, 3, 32, 32, 7)
    _, a = EntropyMix(4)(views, probs=probs)
    _, b = EntropyMix(4)(views, logits=[q.log() * 3 - 1 for q in probs])  # log(q) + const, scaled: different
    _, c = EntropyMix(4)(views, logits=[q.log() + 5.0 for q in probs])     # log(q) + const: same softmax
    assert torch.equal(a.index, c.index)
    assert b.index.shape == a.index.shape


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), sg=sizes_and_grid(max_side=24), dtype=st.sampled_from(FLOAT_DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_channels_last_inputs(V, sg, dtype, seed, device):
    (H, W), grid = sg
    views, probs, _ = make_batch(seed, V, 2, 3, H, W, 4, dtype=dtype, device=device)
    cl_views = [x.contiguous(memory_format=torch.channels_last) for x in views]
    cl_probs = [q.contiguous(memory_format=torch.channels_last) for q in probs]
    mixed, plan = EntropyMix(grid)(views, probs=probs)
    cl_mixed, cl_plan = EntropyMix(grid)(cl_views, probs=cl_probs)
    assert torch.equal(plan.index, cl_plan.index)
    assert torch.equal(mixed, cl_mixed)
    if H > 1 and W > 1:
        assert cl_mixed.is_contiguous(memory_format=torch.channels_last)


def test_entropymix_errors_name_the_argument_and_shapes():
    views, probs, _ = make_batch(0, 2, 2, 3, 16, 16, 5)
    mixer = EntropyMix((4, 4))
    with pytest.raises(ValueError, match="views needs at least 2 tensors"):
        mixer(views[:1], probs=probs[:1])
    with pytest.raises(ValueError, match=r"views must share \(B, C, H, W\).*views\[1\] is \(3, 3, 16, 16\)"):
        mixer([views[0], torch.rand(3, 3, 16, 16)], probs=probs)
    with pytest.raises(ValueError, match=r"views must share \(B, C, H, W\).*views\[1\] is \(2, 3, 16, 17\)"):
        mixer([views[0], torch.rand(2, 3, 16, 17)], probs=probs)
    with pytest.raises(ValueError, match=r"views\[0\] must be 4-D, got shape \(3, 16, 16\)"):
        mixer([views[0][0], views[1][0]], probs=probs)
    with pytest.raises(TypeError, match="views must be a list or tuple"):
        mixer(views[0], probs=probs)
    with pytest.raises(ValueError, match=r"probs\[0\] must be 4-D, got shape \(2, 16, 16\)"):
        mixer(views, probs=[q[:, 0] for q in probs])
    with pytest.raises(ValueError, match=r"probs\[0\] has batch size 1 but views have 2"):
        mixer(views, probs=[q[:1] for q in probs])
    with pytest.raises(ValueError, match=r"probs must share one shape.*probs\[1\] is \(2, 5, 8, 8\)"):
        mixer(views, probs=[probs[0], probs[1][..., :8, :8]])
    with pytest.raises(ValueError, match="probs must be a list of 2 tensors"):
        mixer(views, probs=probs[:1])
    with pytest.raises(ValueError, match=r"probs\[1\] must be probabilities.*\(2, 5, 16, 16\)"):
        mixer(views, probs=[probs[0], probs[1] * 2])
    with pytest.raises(ValueError, match=r"probs\[0\] contains non-finite"):
        mixer(views, probs=[probs[0] * math.nan, probs[1]])
    with pytest.raises(ValueError, match="needs probs= or logits="):
        mixer(views)
    with pytest.raises(ValueError, match="either probs= or logits="):
        mixer(views, probs=probs, logits=probs)
    with pytest.raises(ValueError, match=r"grid \(32, 32\) is larger than the images \(H, W\) = \(16, 16\)"):
        EntropyMix(32)(views, probs=probs)
    with pytest.raises(ValueError, match=r"grid \(8, 8\) is larger than probs maps \(h, w\) = \(4, 4\)"):
        EntropyMix(8)(views, probs=[q[..., :4, :4] for q in probs])
    with pytest.raises(TypeError, match=r"valid\[1\] must be a bool mask or an integer label map.*float32 \(2, 16, 16\)"):
        mixer(views, probs=probs, valid=[None, torch.ones(2, 16, 16)])
    with pytest.raises(ValueError, match=r"valid\[1\] must be a \(B, h, w\) mask or label map with B = 2, got \(3, 16, 16\)"):
        mixer(views, probs=probs, valid=[None, torch.ones(3, 16, 16, dtype=torch.bool)])
    with pytest.raises(ValueError, match="select must be one of"):
        EntropyMix(select="median")
    with pytest.raises(ValueError, match="p must be in"):
        EntropyMix(p=2)
    with pytest.raises(ValueError, match="temperature must be"):
        EntropyMix(temperature=0)
    for bad in (math.inf, math.nan, -1.0, True):  # refused at construction, not at the first call
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
            EntropyMix(temperature=bad)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got nan"):
        EntropyMix(p=math.nan)
    # value checks off: off-simplex input is the caller's business, no error and no sync
    EntropyMix(4, check_values=False)(views, probs=[probs[0], probs[1] * 2])


def test_no_host_device_sync_on_the_hot_path(monkeypatch):
    """With value checks off, nothing in EntropyMix/CutMix/MixPlan.apply reads a value back."""
    views, probs, _ = make_batch(0, 2, 2, 3, 33, 33, 5)
    valid = [torch.ones(2, 33, 33, dtype=torch.bool)] * 2
    labels = [q.argmax(1) for q in probs]

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device synchronisation on the hot path")

    for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__", "numpy", "any_"):
        if hasattr(torch.Tensor, name):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    for original in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
        def guarded(self, idx, *rest, _original=original):
            parts = idx if isinstance(idx, tuple) else (idx,)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
                forbidden()
            return _original(self, idx, *rest)
        monkeypatch.setattr(torch.Tensor, original.__name__, guarded)

    for select in MODES:
        for share in (None, 0.25, (0.1, 0.5)):
            mixed, plan = EntropyMix(4, select=select, p=0.5, check_values=False, share=share)(
                views, probs=probs, valid=valid, generator=torch.Generator().manual_seed(0))
            plan.apply(labels)
    mixed, plan = CutMix()(views, generator=torch.Generator().manual_seed(0))
    plan.apply(labels)
    with pytest.raises(AssertionError, match="synchronisation"):  # the guard does catch value checks
        EntropyMix(4, check_values=True)(views, probs=probs)
    monkeypatch.undo()
    assert mixed.shape == views[0].shape


@pytest.mark.parametrize("device", DEVICES)
# --- MixPlan -----------------------------------------------------------------------------------

@given(V=st.integers(1, 4), B=st.integers(1, 3), sg=sizes_and_grid(max_side=40),
       size=st.tuples(st.integers(1, 50), st.integers(1, 50)), seed=st.integers(0, 2**31 - 1))
def test_fractions_are_pixel_shares(V, B, sg, size, seed, device):
    _, grid = sg
    index = torch.randint(0, V, (B, *grid), generator=torch.Generator().manual_seed(seed)).to(device)
    plan = MixPlan(index, V, size)
    fr = plan.fractions()
    assert fr.shape == (B, V) and fr.dtype == torch.float32
    src = plan.source_map()
    ref = torch.nn.functional.one_hot(src, V).double().mean((1, 2)).float()
    torch.testing.assert_close(fr, ref)
    torch.testing.assert_close(fr.sum(1), torch.ones(B, device=device))


def test_plan_is_plain_replayable_data():
    views, probs, _ = make_batch(0, 3, 2, 3, 21, 21, 5)
    mixed, plan = EntropyMix(3, select="sample")(views, probs=probs, generator=torch.Generator().manual_seed(0))
    clone = pickle.loads(pickle.dumps(plan))
    assert torch.equal(clone.index, plan.index) and clone.num_views == 3 and clone.size == (21, 21)
    assert torch.equal(clone.apply(views), mixed)
    assert torch.equal(plan.apply(views), mixed)  # replay twice, same result
    assert torch.equal(plan.to("cpu").apply(views), mixed)
    assert plan.grid == (3, 3) and plan.batch_size == 2
    with pytest.raises(ValueError, match="the plan mixes 3 views but 2 tensors"):
        plan.apply(views[:2])


@pytest.mark.parametrize("device", DEVICES)
# --- CutMix ------------------------------------------------------------------------------------

@given(B=st.integers(1, 4), sg=sizes_and_grid(max_side=40), p=st.sampled_from([0.0, 0.5, 1.0]),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
def test_cutmix_pastes_one_box_from_the_second_view(B, sg, p, dtype, seed, device):
    (H, W), _ = sg
    views, probs, _ = make_batch(seed, 2, B, 3, H, W, 3, dtype=dtype, device=device)
    mixed, plan = CutMix(p=p)(views, probs=probs, generator=torch.Generator().manual_seed(seed))
    assert plan.index.shape == (B, H, W) and plan.num_views == 2
    check_conservation(mixed, views, plan)
    area = plan.fractions()[:, 1]
    assert (area <= 0.4 + 1e-6).all()
    if p == 0.0:
        assert torch.equal(mixed, views[0])
    # replayed on labels at half resolution: a nearest-resized box
    y = [torch.zeros(B, max(1, H // 2), max(1, W // 2), dtype=torch.long, device=device) + v for v in range(2)]
    assert torch.equal(plan.apply(y), plan.source_map(y[0].shape[-2:]))


def test_cutmix_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="CutMix mixes exactly 2 views, got 3"):
        CutMix()([x, x, x])
    with pytest.raises(ValueError, match="p must be in"):
        CutMix(p=-0.1)


# --- devices -----------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("select", MODES)
def test_cuda_gives_the_same_plan_as_cpu(select):
    views, probs, _ = make_batch(0, 3, 4, 3, 65, 65, 21)
    mixer = EntropyMix(4, select=select, p=0.7)
    mixed, plan = mixer(views, probs=probs, generator=torch.Generator().manual_seed(1))
    cuda_mixed, cuda_plan = mixer([x.cuda() for x in views], probs=[q.cuda() for q in probs],
                                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(cuda_plan.index.cpu(), plan.index)
    assert torch.equal(cuda_mixed.cpu(), mixed)
    _, cut = CutMix()(views[:2], generator=torch.Generator().manual_seed(2))  # CutMix mixes 2 of the 3 views
    _, cuda_cut = CutMix()([x.cuda() for x in views[:2]], generator=torch.Generator().manual_seed(2))
    assert torch.equal(cuda_cut.index.cpu(), cut.index)


@requires_cuda
def test_cuda_hot_path_does_not_synchronise():
    views, probs, _ = make_batch(0, 2, 4, 3, 65, 65, 21)
    views, probs = [x.cuda() for x in views], [q.cuda() for q in probs]
    labels = [q.argmax(1) for q in probs]
    mixer = EntropyMix(4, select="sample", check_values=False)
    mixer(views, probs=probs)  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, plan = mixer(views, probs=probs, generator=None)
        plan.apply(labels)
        _, plan = CutMix()(views)
        plan.apply(labels)
        for share in (0.25, (0.1, 0.5)):
            _, plan = EntropyMix(4, check_values=False, share=share)(views, probs=probs)
            plan.apply(labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- mixed precision and real training inputs ---------------------------------------------------

@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=40), K=st.integers(2, 21),
       select=st.sampled_from(MODES), use_logits=st.booleans(), prob_dtype=st.sampled_from(FLOAT_DTYPES),
       seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, sg=((321, 321), (4, 4)), K=21, select="max", use_logits=False, prob_dtype=torch.float32, seed=0)
def test_autocast_gives_the_same_plan_bit_for_bit(V, B, sg, K, select, use_logits, prob_dtype, seed, device, amp_dtype):
    (H, W), grid = sg
    views, probs, _ = make_batch(seed, V, B, 3, H, W, K, device=device)
    g = torch.Generator().manual_seed(seed)
    valid = [torch.where(torch.rand(B, H, W, generator=g) < 0.8, 0, 255).to(device) for _ in range(V)]
    maps = [p.log().to(prob_dtype) for p in probs] if use_logits else [p.to(prob_dtype) for p in probs]
    kw = {"logits" if use_logits else "probs": maps, "valid": valid}
    mixer = EntropyMix(grid, select=select)
    ref, ref_plan = mixer(views, generator=torch.Generator().manual_seed(1), **kw)
    with torch.autocast(device, dtype=amp_dtype):
        out, plan = mixer(views, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(plan.index, ref_plan.index) and torch.equal(out, ref)


@given(B=st.integers(1, 3), K=st.sampled_from([2, 19, 21, 150]), h=st.integers(1, 33), w=st.integers(1, 33),
       half=st.sampled_from([torch.float16, torch.bfloat16]), scale=st.sampled_from([0.1, 3.0, 30.0]),
       seed=st.integers(0, 2**31 - 1))
def test_probabilities_that_went_through_half_precision_pass_the_default_checks(B, K, h, w, half, scale, seed):
    """A softmax under autocast then ``.float()``: a normal training loop, never rejected."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(B, K, h, w, generator=g)
    views = [torch.rand(B, 3, h, w, generator=g) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_autocast = logits.to(half).softmax(1).float()
    e = (logits.to(half) - logits.to(half).amax(1, keepdim=True)).exp()  # a softmax written by hand, in half
    p_manual = (e / e.sum(1, keepdim=True)).float()
    for p in (p_autocast, p_manual, logits.softmax(1).to(half)):
        EntropyMix(grid=1)(views, probs=[p, p])  # default construction: checks on


def test_value_check_names_its_tolerance_and_still_rejects_scores():
    views = [torch.rand(2, 3, 8, 8) for _ in range(2)]
    p = torch.rand(2, 5, 8, 8).softmax(1)
    with pytest.raises(ValueError, match=r"probs\[1\] must be probabilities: .*within 0.02"):
        EntropyMix(2)(views, probs=[p, p * 1.03])
    with pytest.raises(ValueError, match=r"probs\[0\] must be probabilities"):
        EntropyMix(2)(views, probs=[torch.randn(2, 5, 8, 8), p])


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), div=st.sampled_from([1, 2, 4]),
       ignore_index=st.sampled_from([255, -1, 0]), select=st.sampled_from(["max", "min", "sample"]),
       seed=st.integers(0, 2**31 - 1))
def test_valid_as_label_map_equals_valid_as_bool_mask(V, B, sg, div, ignore_index, select, seed, device):
    """One convention everywhere: a bool mask, or a label map whose ``ignore_index`` pixels are invalid."""
    (H, W), grid = sg
    views, probs, g = make_batch(seed, V, B, 3, H, W, 4, device=device)
    h, w = max(1, H // div), max(1, W // div)
    labels = [torch.randint(0, 3, (B, h, w), generator=g).masked_fill(torch.rand(B, h, w, generator=g) < 0.4,
                                                                        ignore_index).to(device) for _ in range(V)]
    mixer = EntropyMix(grid, select=select, ignore_index=ignore_index)
    a, plan_a = mixer(views, probs=probs, valid=labels, generator=torch.Generator().manual_seed(seed))
    b, plan_b = mixer(views, probs=probs, valid=[y != ignore_index for y in labels],
                      generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plan_a.index, plan_b.index) and torch.equal(a, b)


@given(dtypes=st.lists(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
                       min_size=2, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_apply_promotes_mixed_dtypes_like_torch_where(dtypes, seed):
    """``plan.apply([conf_bf16, conf_fp32])`` is the common dtype; every value is the source's, exactly."""
    g = torch.Generator().manual_seed(seed)
    V = len(dtypes)
    plan = MixPlan(torch.randint(0, V, (2, 3, 3), generator=g), V, (7, 9))
    tensors = [torch.rand(2, 7, 9, generator=g).to(dt) for dt in dtypes]
    out = plan.apply(tensors)
    want = dtypes[0]
    for dt in dtypes[1:]:
        want = torch.promote_types(want, dt)
    assert out.dtype == want
    ref = torch.stack([t.to(want) for t in tensors]).gather(0, plan.source_map((7, 9))[None])[0]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("device", DEVICES)
# --- ClassMix -----------------------------------------------------------------------------------

@given(B=st.integers(1, 3), C=st.integers(1, 3), sg=sizes_and_grid(max_side=33), K=st.integers(1, 8),
       div=st.sampled_from([1, 2, 4]), p_valid=st.sampled_from([0.0, 0.6, 1.0]), p=st.sampled_from([0.0, 0.5, 1.0]),
       use_logits=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(B=2, C=3, sg=((321, 321), (1, 1)), K=21, div=4, p_valid=0.9, p=1.0, use_logits=False, seed=0)
def test_classmix_pastes_exactly_half_of_the_predicted_classes(B, C, sg, K, div, p_valid, p, use_logits, seed, device):
    (H, W), _ = sg
    views, _, g = make_batch(seed, 2, B, C, H, W, K, device=device)
    h, w = max(1, H // div), max(1, W // div)
    probs = [random_probs(g, (B, K, h, w)).to(device) for _ in range(2)]
    valid_mix = torch.where(torch.rand(B, h, w, generator=g) < p_valid, 0, 255).to(device)
    kw = {"logits": [q.log() for q in probs]} if use_logits else {"probs": probs}
    mixed, plan = ClassMix(p=p)(views, valid=[None, valid_mix], generator=torch.Generator().manual_seed(seed), **kw)
    check_conservation(mixed, views, plan)  # every pixel is the same pixel of one view, bit for bit
    assert plan.grid == (h, w) and plan.num_views == 2
    labels, valid = probs[1].argmax(1), valid_mix != 255
    pasted = plan.index.bool()
    for b in range(B):
        if not pasted[b].any():
            if p == 1.0:  # mixed, but nothing to paste only when no valid pixel exists
                assert not valid[b].any()
            continue
        drawn = set(labels[b][pasted[b]].tolist())
        present = set(labels[b][valid[b]].tolist())
        assert len(drawn) == (len(present) + 1) // 2 and drawn <= present
        want = torch.isin(labels[b], torch.tensor(sorted(drawn), device=device)) & valid[b]
        assert torch.equal(pasted[b], want)  # exactly the drawn classes' valid pixels; ignore never pasted
    # replay: labels, confidences and masks follow the image at the image's resolution
    y = [torch.randint(0, K, (B, H, W), generator=g).to(device) for _ in range(2)]
    ref = torch.where(plan.source_map((H, W)).bool(), y[1], y[0])
    assert torch.equal(plan.apply(y), ref)
    again, plan2 = ClassMix(p=p)(views, valid=[None, valid_mix], generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(plan2.index, plan.index) and torch.equal(again, mixed)


def test_classmix_errors():
    views = [torch.rand(2, 3, 8, 8) for _ in range(2)]
    with pytest.raises(ValueError, match="pass exactly one of probs= or logits="):
        ClassMix()(views)
    with pytest.raises(ValueError, match=r"ClassMix mixes exactly 2 views, got 3"):
        ClassMix()(views + views[:1], probs=[torch.rand(2, 4, 8, 8)] * 3)
    with pytest.raises(ValueError, match=r"probs\[1\] must be \(B, K, h, w\) with B = 2.*got \(3, 4, 8, 8\)"):
        ClassMix()(views, probs=[None, torch.rand(3, 4, 8, 8)])
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        ClassMix(p=2)


@pytest.mark.parametrize("device", DEVICES)
# --- invalid pixels never matter; inputs untouched; plans move ----------------------------------

@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), K=st.integers(2, 5),
       select=st.sampled_from(["max", "min", "sample"]), junk=st.sampled_from([math.nan, math.inf, -1.0, 7.0]),
       use_logits=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_values_at_ignored_pixels_never_change_cells_or_the_plan(V, B, sg, K, select, junk, use_logits, seed, device):
    (H, W), grid = sg
    views, probs, g = make_batch(seed, V, B, 3, H, W, K, device=device)
    valid = [(torch.rand(B, H, W, generator=g) < 0.6).to(device) for _ in range(V)]
    maps = [p.log() for p in probs] if use_logits else probs
    dirty = [m.masked_fill(~v[:, None], junk) for m, v in zip(maps, valid)]
    key = "logits" if use_logits else "probs"
    mixer = EntropyMix(grid, select=select)  # value checks on: they look at valid pixels only
    a, plan_a = mixer(views, valid=valid, generator=torch.Generator().manual_seed(seed), **{key: maps})
    b, plan_b = mixer(views, valid=valid, generator=torch.Generator().manual_seed(seed), **{key: dirty})
    assert torch.equal(plan_a.index, plan_b.index) and torch.equal(a, b)
    ent = F.entropy(probs[0]).masked_fill(~valid[0], junk)
    clean_cells = F.patch_entropy(F.entropy(probs[0]), grid, valid[0])
    assert torch.equal(F.patch_entropy(ent, grid, valid[0]), clean_cells)


def test_no_mixing_input_is_modified():
    views, probs, g = make_batch(0, 3, 2, 3, 17, 19, 4)
    valid = [torch.randint(0, 3, (2, 17, 19), generator=g).index_fill_(1, torch.tensor([0]), 255) for _ in range(3)]
    ent = F.entropy(probs[0])
    logits = [p.log() for p in probs]  # real logits: probabilities passed as logits would warn
    inputs = [*views, *probs, *logits, *valid, ent]
    before = [t.clone() for t in inputs]
    for select in MODES:
        _, plan = EntropyMix(4, select=select, p=0.5)(views, probs=probs, valid=valid, generator=g)
        plan.apply(valid)
        EntropyMix(4, select=select)(views, logits=logits, valid=valid, generator=g)
    CutMix()(views[:2], generator=g)
    ClassMix()(views[:2], probs=probs[:2], valid=valid[:2], generator=g)
    F.patch_entropy(ent, (3, 5), valid[0] != 255)
    F.patch_entropy(ent, (3, 5))
    F.select_views(torch.stack([F.patch_entropy(ent, 2)] * 2), "sample", generator=g)
    F.apply_plan(plan.index, views)
    F.entropy(probs[1]), F.entropy_from_logits(logits[2])
    assert all(torch.equal(a, b) for a, b in zip(inputs, before))


@given(V=st.integers(1, 4), sg=sizes_and_grid(max_side=20), seed=st.integers(0, 2**31 - 1))
def test_plan_to_moves_the_index_and_keeps_the_plan(V, sg, seed):
    (H, W), grid = sg
    g = torch.Generator().manual_seed(seed)
    plan = MixPlan(torch.randint(0, V, (2, *grid), generator=g), V, (H, W))
    moved = plan.to("meta")  # stands in for a GPU
    assert moved.index.device.type == "meta" and moved.index.shape == plan.index.shape
    assert (moved.num_views, moved.size, moved.grid) == (plan.num_views, plan.size, plan.grid)
    out = moved.apply([torch.empty(2, 3, H, W, device="meta")] * V)
    assert out.device.type == "meta" and out.shape == (2, 3, H, W)
    back = moved.to("cpu") if False else plan.to("cpu")
    assert back == plan
    if torch.cuda.is_available():  # a real device: the moved plan replays there, the same values
        views = [torch.full((2, 3, H, W), float(v)) for v in range(V)]
        cuda = plan.to("cuda")
        assert cuda.index.is_cuda and torch.equal(cuda.apply([x.cuda() for x in views]).cpu(), plan.apply(views))
        assert cuda.to("cpu") == plan


@given(B=st.integers(1, 8), H=st.integers(2, 48), W=st.integers(2, 48), area=st.sampled_from([0.9, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_cutmix_fallback_box_is_shifted_inside_the_image(B, H, W, area, seed):
    """Boxes of 90-100% of the image rarely fit at a random corner, so the fallback runs: it must
    shift the box inside with its drawn size, never clip it. The observed box must be explained
    by one aspect r in [0.3, 1/0.3]: width min(floor(sqrt(A / r)), W), height min(floor(sqrt(A r)), H)."""
    A = area * H * W
    index = F.cutmix_boxes(B, (H, W), 1.0, area, area, generator=torch.Generator().manual_seed(seed))
    for b in range(B):
        ys, xs = index[b].nonzero(as_tuple=True)
        bh, bw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert index[b].sum() == bh * bw  # one solid rectangle
        lo, hi = 0.3 - 1e-9, 1 / 0.3 + 1e-9  # the r that give this width, then this height
        if bw == W:
            hi = min(hi, A / W**2 + 1e-9)
        else:
            lo, hi = max(lo, A / (bw + 1) ** 2), min(hi, A / bw**2 + 1e-9)
        if bh == H:
            lo = max(lo, H**2 / A - 1e-9)
        else:
            lo, hi = max(lo, bh**2 / A - 1e-9), min(hi, (bh + 1) ** 2 / A)
        assert lo < hi, (b, bh, bw, H, W)


def test_an_in_place_edit_of_the_index_is_seen_by_apply():
    """The masks cached per resolution are keyed on the index's version: no stale replay."""
    plan = MixPlan(torch.zeros(2, 2, 2, dtype=torch.long), 2, (4, 4))
    views = [torch.zeros(2, 4, 4), torch.ones(2, 4, 4)]
    assert plan.apply(views).sum() == 0
    plan.index[:, 0, 0] = 1
    assert plan.apply(views).sum() == 2 * 4 and plan.apply(views)[:, :2, :2].eq(1).all()


# --- contracts of the newer surface: ClassMix's p and independence, MixPlan construction -------

@pytest.mark.parametrize("device", DEVICES)
@given(p=st.sampled_from([0.0, 0.25, 0.5, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_classmix_p_is_the_share_of_mixed_samples_and_unmixed_samples_are_view_0(p, seed, device):
    B, K = 200, 4
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (B, 6, 6), generator=g)
    labels[:, 0, :K] = torch.arange(K)  # every class present in every sample: a mixed sample pastes something
    logits = torch.nn.functional.one_hot(labels, K).permute(0, 3, 1, 2).float().mul(9).to(device)
    views = [torch.zeros(B, 1, 6, 6, device=device), torch.ones(B, 1, 6, 6, device=device)]
    mixed, plan = ClassMix(p=p)(views, logits=[logits, logits], generator=torch.Generator().manual_seed(seed))
    pasted = plan.index.flatten(1).any(1)
    share = float(pasted.float().mean())
    sigma = math.sqrt(p * (1 - p) / B)
    assert abs(share - p) <= 5 * sigma + 1e-9, (share, p)
    assert (plan.index[~pasted] == 0).all() and (mixed[~pasted] == 0).all()


@given(seed=st.integers(0, 2**31 - 1))
def test_classmix_draws_the_classes_independently_per_sample(seed):
    """64 samples with the same classes: their drawn subsets are not all the same (that would
    happen with probability (1/6)^63 if they were independent draws of 2 of 4 classes)."""
    B, K = 64, 4
    labels = torch.arange(K).repeat_interleave(4).view(1, 4, 4).expand(B, 4, 4)
    masks = F.classmix_masks(labels.contiguous(), K, generator=torch.Generator().manual_seed(seed))
    subsets = {tuple(sorted(set(labels[b][masks[b].bool()].tolist()))) for b in range(B)}
    assert len(subsets) > 1 and all(len(s) == 2 for s in subsets)


@given(V=st.integers(1, 5), B=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4),
       bad=st.sampled_from(["-1", "V", "V+7"]), seed=st.integers(0, 2**31 - 1))
def test_mixplan_rejects_every_out_of_range_index(V, B, gh, gw, bad, seed):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, V, (B, gh, gw), generator=g)
    MixPlan(index, V, (8, 8))  # in range: accepted
    at = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in (B, gh, gw))
    wrong = index.clone()
    wrong[at] = {"-1": -1, "V": V, "V+7": V + 7}[bad]
    with pytest.raises(ValueError, match=rf"index values must lie in \[0, {V}\)"):
        MixPlan(wrong, V, (8, 8))


@given(V=st.integers(2, 4), seed=st.integers(0, 2**31 - 1),
       field=st.sampled_from(["index value", "index shape", "num_views", "size", "device"]))
def test_mixplans_differing_in_any_field_compare_unequal(V, seed, field):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, V - 1, (2, 3, 3), generator=g)
    plan = MixPlan(index, V, (9, 9))
    assert plan == MixPlan(index.clone(), V, (9, 9))
    other = {"index value": lambda: MixPlan(index.index_put((torch.tensor([0]),) * 3, torch.tensor(V - 1)), V, (9, 9)),
             "index shape": lambda: MixPlan(index[:, :2], V, (9, 9)),
             "num_views": lambda: MixPlan(index, V + 1, (9, 9)),
             "size": lambda: MixPlan(index, V, (9, 10)),
             "device": lambda: MixPlan(index.to("meta"), V, (9, 9))}[field]()
    assert plan != other and other != plan


@given(seed=st.integers(0, 2**31 - 1), K=st.integers(3, 6))
def test_classmix_never_counts_classes_seen_only_at_invalid_pixels(seed, K):
    """Left half valid with classes 0 and 1; every other class only on the invalid right half: one
    of the two valid classes is drawn per sample (ceil(2 / 2)), never both."""
    B = 32
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(B, 4, 8, dtype=torch.long)
    labels[:, :, 2:4] = 1
    labels[:, :, 4:] = torch.randint(2, K, (B, 4, 4), generator=g)
    valid = torch.zeros(B, 4, 8, dtype=torch.bool)
    valid[:, :, :4] = True
    masks = F.classmix_masks(labels, K, valid, generator=torch.Generator().manual_seed(seed))
    for b in range(B):
        drawn = set(labels[b][masks[b].bool()].tolist())
        assert len(drawn) == 1 and drawn <= {0, 1}, drawn


@given(select=st.sampled_from(MODES), T=st.sampled_from([0.05, 1.0, 20.0]), V=st.integers(2, 3),
       seed=st.integers(0, 2**31 - 1))
def test_entropymix_is_the_functional_composition(select, T, V, seed):
    """The module is a thin layer: with p = 1 its plan is select_views(patch_entropy(entropy(.)))
    with the same mode, temperature and generator draws."""
    views, probs, g = make_batch(seed, V, 2, 3, 19, 23, 5)
    valid = [torch.rand(2, 19, 23, generator=g) < 0.8 for _ in range(V)]
    _, plan = EntropyMix((3, 4), select=select, temperature=T)(views, probs=probs, valid=valid,
                                                                generator=torch.Generator().manual_seed(seed))
    cells, nonempty = zip(*(F.patch_entropy(F.entropy(q), (3, 4), m, return_valid=True) for q, m in zip(probs, valid)))
    ref = F.select_views(torch.stack(cells), select, T, torch.Generator().manual_seed(seed), valid=torch.stack(nonempty))
    assert torch.equal(plan.index, ref)


# --- mixing a batch with itself ---------------------------------------------------------------------

WITHIN = {"max": lambda p: EntropyMix(4, "max", p=p), "min": lambda p: EntropyMix(4, "min", p=p),
          "sample": lambda p: EntropyMix(4, "sample", p=p, temperature=0.05),
          "random": lambda p: EntropyMix(4, "random", p=p), "cutmix": lambda p: CutMix(p=p, size_max=1.0),
          "classmix": lambda p: ClassMix(p=p)}


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(2, 9), mixer=st.sampled_from(sorted(WITHIN)), p=st.sampled_from([1.0, 0.5]),
       teacher=st.sampled_from(["random", "uniform", "one-unsure", "one-sure"]), H=st.integers(4, 21),
       W=st.integers(4, 21), seed=st.integers(0, 2**31 - 1))
@example(B=2, mixer="max", p=1.0, teacher="random", H=32, W=32, seed=0)  # the reproduction, at B = 2
@example(B=3, mixer="max", p=1.0, teacher="one-unsure", H=8, W=8, seed=0)
def test_within_batch_never_duplicates_a_sample_nor_mixes_one_with_itself(B, mixer, p, teacher, H, W, seed, device):
    """Sample b shows only images b and b - 1 (never itself paired), B >= 3 keeps a pixel of its own
    image, and no two mixed samples are equal, whatever the selection and the teacher (ties
    everywhere, or one image the most, or the least, uncertain in every cell)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    x[:, 0] = torch.arange(B, dtype=torch.float32)[:, None, None]  # channel 0: the image's id
    logits = torch.randn(B, 5, H, W, generator=g) * 4
    if teacher == "uniform":
        logits.zero_()
    elif teacher != "random":  # image 1 flat (most uncertain) or sharp (least) in every cell
        logits[1] = 0.0 if teacher == "one-unsure" else logits[1] * 100
    x, logits = x.to(device), logits.to(device)
    before = x.clone()
    mixed, plan = WITHIN[mixer](p).within_batch(x, logits=logits, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(x, before) and mixed.shape == x.shape and plan.num_views == 2
    assert torch.equal(mixed, plan.apply(F.pair_within_batch(x)))
    src = mixed[:, 0].long().cpu()
    own = torch.arange(B)[:, None, None]
    assert ((src == own) | (src == (own - 1) % B)).all()  # its own image or its partner's
    if B >= 3:
        assert (src == own).flatten(1).any(1).all()
    assert not any(torch.equal(mixed[a], mixed[b]) for a in range(B) for b in range(a))


def test_within_batch_pairs_every_replayed_tensor_like_the_views():
    g = torch.Generator().manual_seed(0)
    x, lg = torch.rand(5, 3, 16, 16, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (5, 16, 16), generator=g)
    ignore = torch.zeros(5, 8, 8, dtype=torch.long).index_fill_(2, torch.tensor([7]), 255)
    mixed, plan = EntropyMix(2).within_batch(x, logits=lg, valid=ignore)
    _, by_hand = EntropyMix(2)([x, x.roll(1, 0)], logits=[lg, lg.roll(1, 0)], valid=[ignore, ignore.roll(1, 0)])
    assert torch.equal(plan.index, F.distinct_within_batch(by_hand.index))  # the same selection, made distinct
    assert torch.equal(plan.apply(F.pair_within_batch(labels)), torch.where(plan.source_map() == 1, labels.roll(1, 0), labels))
    one, plan1 = EntropyMix(2).within_batch(x[:1], logits=lg[:1])
    assert torch.equal(one, x[:1])  # B = 1: nothing to pair with, the sample as it is
    with pytest.raises(ValueError, match="x must be 4-D"):
        EntropyMix(2).within_batch(x[0], logits=lg)


# --- contracts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer", [EntropyMix(2), CutMix(), ClassMix()], ids=["entropymix", "cutmix", "classmix"])
def test_all_views_of_one_call_share_a_dtype(mixer):
    views = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"views must share dtype and device: views\[0\] is torch.float32 on cpu, "
                                         r"views\[1\] is torch.float64 on cpu"):
        mixer(views, probs=[torch.full((2, 2, 8, 8), 0.5)] * 2)


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), K=st.integers(2, 5),
       select=st.sampled_from(["max", "min", "sample"]), use_labels=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_a_cell_with_no_valid_pixel_in_one_view_is_never_chosen_from_it(B, sg, K, select, use_labels, seed, device):
    """``valid=[None, mask]``: view 0 is valid everywhere, so no cell that is empty in view 1's mask
    (a bool mask or a label map at 255) may come from view 1, whatever the selection."""
    (H, W), grid = sg
    views, probs, g = make_batch(seed, 2, B, 1, H, W, K, device=device)
    mask = (torch.rand(B, H, W, generator=g) < 0.5)
    rows, cols = naive_cells(H, grid[0]), naive_cells(W, grid[1])
    empty_cell = torch.rand(B, *grid, generator=g) < 0.5
    mask &= ~empty_cell[:, rows][:, :, cols]
    # View 1 is what the selection wants in every cell: the least uncertain for "min", the most otherwise.
    uniform = torch.full_like(probs[0], 1 / K)
    one_hot = torch.zeros_like(probs[0]).index_fill_(1, torch.tensor([0], device=device), 1.0)
    probs = [uniform, one_hot] if select == "min" else [one_hot, uniform]
    valid1 = mask.to(device) if not use_labels else torch.where(mask, 0, 255).to(device)
    _, plan = EntropyMix(grid, select=select, temperature=0.01)(views, probs=probs, valid=[None, valid1],
                                                                generator=torch.Generator().manual_seed(seed))
    assert not (plan.index.cpu().bool() & empty_cell).any()


# --- volumes: (B, C, X, Y, Z) views, (B, K, x, y, z) teachers ---------------------------------------------

def make_volumes(seed, V, B, C, size, K, stride, device="cpu", dtype=torch.float32):
    """V views whose channel 0 holds the view id, and teacher probabilities at ``size // stride``."""
    g = torch.Generator().manual_seed(seed)
    views = []
    for v in range(V):
        x = torch.randn(B, C, *size, generator=g)
        x[:, 0] = v
        views.append(x.to(device=device, dtype=dtype))
    s = tuple(max(1, n // st_) for n, st_ in zip(size, stride))
    scale = torch.rand(B, 1, *s, generator=g) * 6
    probs = [(torch.randn(B, K, *s, generator=g) * scale).softmax(1).to(device) for _ in range(V)]
    return views, probs, g


vol = st.tuples(st.integers(1, 13), st.integers(1, 13), st.integers(1, 9))


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), B=st.integers(1, 2), C=st.integers(1, 2), size=vol, data=st.data(), K=st.integers(2, 4),
       select=st.sampled_from(MODES), p=st.sampled_from([0.5, 1.0]), stride=st.sampled_from([(1, 1, 1), (2, 2, 1)]),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, C=1, size=(16, 20, 12), data=None, K=3, select="max", p=1.0, stride=(2, 2, 2),
         dtype=torch.float32, seed=0)  # the shapes: (2, 1, 16, 20, 12) views, (2, 3, 8, 10, 6) probs
def test_entropymix_on_volumes_conserves_voxels_selects_by_entropy_and_replays(V, B, C, size, data, K, select, p,
                                                                              stride, dtype, seed, device):
    s = tuple(max(1, n // k) for n, k in zip(size, stride))
    grid = (2, 2, 2) if data is None else tuple(data.draw(st.integers(1, min(a, 3))) for a in s)
    views, probs, g = make_volumes(seed, V, B, C, size, K, stride, device, dtype)
    before = [x.clone() for x in views + probs]
    mixed, plan = EntropyMix(grid, select=select, p=p)(views, probs=probs, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(views + probs, before))  # nothing in place
    assert mixed.shape == views[0].shape and plan.index.shape == (B, *grid) and plan.size == size
    cells = [naive_cells(n, gd) for n, gd in zip(size, grid)]
    src = plan.index.cpu()[:, cells[0]][:, :, cells[1]][:, :, :, cells[2]]
    ref = torch.stack([x.cpu() for x in views]).gather(0, src[None, :, None].expand(1, B, C, *size))[0]
    assert torch.equal(mixed.cpu(), ref)  # every voxel, bit for bit, the same voxel of the view the plan names
    assert torch.equal(plan.source_map().cpu(), src)
    if select in ("max", "min") and p == 1.0:  # by float64 cell entropies
        E = torch.stack([F.patch_entropy(-(q.double() * q.double().log()).nan_to_num().sum(1), grid) for q in probs]).cpu()
        chosen = E.gather(0, plan.index.cpu()[None])[0]
        best = E.max(0).values if select == "max" else E.min(0).values
        assert torch.allclose(chosen, best, rtol=0, atol=1e-6)
    labels = [torch.full((B, *size), v, device=device) for v in range(V)]        # replay on labels...
    assert torch.equal(plan.apply(labels).cpu(), src)
    feats = [torch.full((B, 3, *s), float(v), device=device) for v in range(V)]  # ...and features at the teacher's size
    assert torch.equal(plan.apply(feats).cpu()[:, 0].long(), plan.source_map(s).cpu())
    torch.testing.assert_close(plan.fractions().sum(1), torch.ones(B, device=device))


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 2), size=vol, K=st.integers(2, 4), select=st.sampled_from(["max", "min", "sample"]),
       seed=st.integers(0, 2**31 - 1))
def test_volume_cells_with_no_valid_voxel_are_never_chosen_and_ignored_values_never_matter(B, size, K, select, seed, device):
    views, probs, g = make_volumes(seed, 2, B, 1, size, K, (1, 1, 1), device)
    grid = tuple(min(2, n) for n in size)
    cells = [naive_cells(n, gd) for n, gd in zip(size, grid)]
    empty = torch.rand(B, *grid, generator=g) < 0.5
    valid = (torch.rand(B, *size, generator=g) < 0.6) & ~empty[:, cells[0]][:, :, cells[1]][:, :, :, cells[2]]
    uniform, one_hot = torch.full_like(probs[0], 1 / K), torch.zeros_like(probs[0])
    one_hot[:, 0] = 1.0
    probs = [uniform, one_hot] if select == "min" else [one_hot, uniform]  # view 1 is what the selection wants
    junk = probs[1].clone()
    junk[:, :, ~valid.to(device).any(0)] = math.nan  # NaN at voxels no sample counts
    labels = torch.where(valid, 0, 255).to(device)
    mixer = EntropyMix(grid, select=select, temperature=0.01)
    _, plan = mixer(views, probs=probs, valid=[None, labels], generator=torch.Generator().manual_seed(seed))
    assert not (plan.index.cpu().bool() & empty).any()
    _, plan_junk = mixer(views, probs=[probs[0], torch.where(valid.to(device)[:, None], probs[1], junk)],
                         valid=[None, labels], generator=torch.Generator().manual_seed(seed))
    assert plan_junk == plan


@pytest.mark.parametrize("device, amp_dtype", AUTOCAST)
@given(size=vol, select=st.sampled_from(["max", "min", "sample"]), seed=st.integers(0, 2**31 - 1))
def test_volume_plans_are_the_same_under_autocast(size, select, seed, device, amp_dtype):
    views, probs, _ = make_volumes(seed, 2, 2, 1, size, 3, (1, 1, 1), device)
    grid = tuple(min(2, n) for n in size)
    mixer = EntropyMix(grid, select=select)
    _, plan = mixer(views, logits=[q.log() for q in probs], generator=torch.Generator().manual_seed(seed))
    with torch.autocast(device, dtype=amp_dtype):
        _, plan_amp = mixer(views, logits=[q.log() for q in probs], generator=torch.Generator().manual_seed(seed))
    assert plan_amp == plan


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(2, 6), size=vol, mixer=st.sampled_from(["max", "sample", "cutmix", "bcp", "classmix"]),
       seed=st.integers(0, 2**31 - 1))
def test_volume_mixers_conserve_voxels_and_never_duplicate_within_a_batch(B, size, mixer, seed, device):
    make = {"max": lambda: EntropyMix(1, "max"), "sample": lambda: EntropyMix(1, "sample"),
            "cutmix": lambda: CutMix(p=1.0), "bcp": lambda: CutMix(p=1.0, share=2 / 3, shared=True),
            "classmix": lambda: ClassMix()}[mixer]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 2, *size, generator=g)
    x[:, 0] = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1)
    logits = (torch.randn(B, 3, *size, generator=g) * 4).to(device)
    x = x.to(device)
    mixed, plan = make()(F.pair_within_batch(x), logits=F.pair_within_batch(logits), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(mixed, plan.apply(F.pair_within_batch(x)))
    mixed, plan = make().within_batch(x, logits=logits, generator=torch.Generator().manual_seed(seed))
    src, own = mixed[:, 0].long().cpu(), torch.arange(B).view(B, 1, 1, 1)
    assert ((src == own) | (src == (own - 1) % B)).all()
    assert not any(torch.equal(mixed[a], mixed[b]) for a in range(B) for b in range(a))


def test_volume_errors_name_the_argument_and_shapes():
    v = [torch.rand(2, 1, 8, 8, 4)] * 2
    with pytest.raises(ValueError, match=r"grid \(4, 4, 8\) is larger than the images \(X, Y, Z\) = \(8, 8, 4\)"):
        EntropyMix((4, 4, 8))(v, probs=[torch.full((2, 2, 8, 8, 4), 0.5)] * 2)
    with pytest.raises(TypeError, match=r"grid must be an int or a tuple of 3 ints"):
        EntropyMix((2, 2))(v, probs=[torch.full((2, 2, 8, 8, 4), 0.5)] * 2)
    with pytest.raises(ValueError, match=r"probs\[0\] must be 5-D, got shape \(2, 2, 8, 8\)"):
        EntropyMix(2)(v, probs=[torch.full((2, 2, 8, 8), 0.5)] * 2)
    with pytest.raises(ValueError, match=r"views must share \(B, C, X, Y, Z\)"):
        EntropyMix(2)([v[0], torch.rand(2, 1, 8, 8, 5)], probs=[torch.full((2, 2, 8, 8, 4), 0.5)] * 2)
    with pytest.raises(ValueError, match=r"valid\[1\] must be 4-D, got shape \(2, 8, 8\)"):
        EntropyMix(2)(v, probs=[torch.full((2, 2, 8, 8, 4), 0.5)] * 2, valid=[None, torch.ones(2, 8, 8, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        CutMix(share=1.5)


def test_volume_plan_summary_fractions_and_equality():
    index = torch.zeros(3, 2, 2, 2, dtype=torch.long)
    index[1, 0, 1, 1] = 1          # one cell of eight from view 1, away from the first axis' start
    index[2] = 1                   # taken whole from view 1
    plan = MixPlan(index, 2, (4, 6, 3))
    # cells of 2 x 3 x (2 or 1) voxels: the (0, 1, 1) cell holds 2 * 3 * 1 of 72
    torch.testing.assert_close(plan.fractions()[1], torch.tensor([1 - 6 / 72, 6 / 72]))
    assert plan.summary()["whole"] == pytest.approx(2 / 3)  # samples 0 and 2 come whole from one view
    assert plan.grid == (2, 2, 2) and plan.source_map((4, 6, 3)).shape == (3, 4, 6, 3)
    assert plan == pickle.loads(pickle.dumps(plan)) and plan != MixPlan(index, 2, (4, 6, 4))
    with pytest.raises(TypeError, match=r"size must be an int or a tuple of 3 ints"):
        MixPlan(index, 2, (4, 6))


# --- issue 40: contracts the suite now holds ------------------------------------------------------

@settings(max_examples=20)
@given(V=st.integers(2, 3), B=st.integers(1, 3), K=st.integers(2, 6), hw=st.integers(2, 9), seed=st.integers(0, 2**31 - 1))
def test_probabilities_passed_as_logits_warn_once_and_real_logits_never(V, B, K, hw, seed):
    """Softmax over probabilities flattens the entropies and changes the plan: warn, once per process."""
    F._WARNED_PROBS_AS_LOGITS[0] = False
    g = torch.Generator().manual_seed(seed)
    x = [torch.rand(B, 3, hw, hw, generator=g) for _ in range(V)]
    logits = [torch.randn(B, K, hw, hw, generator=g) * 3 + 2 for _ in range(V)]  # entries above 1: never probabilities
    probs = [z.softmax(1) for z in logits]
    mixer = EntropyMix(grid=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer(x, logits=logits)
        EntropyMix(grid=2, check_values=False)(x, logits=probs)  # no check, no read, no warning
    with pytest.warns(UserWarning, match=r"logits\[0\]: every row is in \[0, 1\] and sums to 1 .* pass probs="):
        mixer(x, logits=probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer(x, logits=probs)  # once per process


@pytest.mark.parametrize("odd", [0, 1, 2])
@pytest.mark.parametrize("mixer", [EntropyMix(2), EntropyMix(2, select="random")], ids=["max", "random"])
def test_every_view_is_checked_for_dtype_not_only_the_first_two(mixer, odd):
    views = [torch.rand(2, 3, 8, 8) for _ in range(3)]
    views[odd] = views[odd].double()
    first, other = ("float64", "float32") if odd == 0 else ("float32", "float64")
    with pytest.raises(ValueError, match=rf"views must share dtype and device: views\[0\] is torch.{first} on cpu, "
                                         rf"views\[{max(odd, 1)}\] is torch.{other} on cpu"):
        mixer(views, probs=[torch.full((2, 2, 8, 8), 0.5)] * 3)


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(2, 5), sg=sizes_and_grid(max_side=16), K=st.integers(2, 4), div=st.sampled_from([1, 2]),
       select=st.sampled_from(["max", "min", "sample"]), seed=st.integers(0, 2**31 - 1))
def test_within_batch_rolls_the_partners_valid_mask_with_the_partner(B, sg, K, div, select, seed, device):
    """The partner's mask travels with the partner: the plan is the one made from explicitly rolled
    views, maps and masks, and a cell with no valid pixel in the partner is never taken from it
    while the sample's own cell has one."""
    (H, W), grid = sg
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 2, H, W, generator=g).to(device)
    probs = torch.rand(B, K, H, W, generator=g).softmax(1).to(device)
    # per sample, no valid pixel, a few, or many: cells empty in one sample and not in its partner
    density = torch.tensor([0.0, 0.03, 0.4, 1.0])[torch.randint(0, 4, (B, 1, 1), generator=g)]
    valid = (torch.rand(B, -(-H // div), -(-W // div), generator=g) < density).to(device)
    mixer = EntropyMix(grid, select=select)  # "min": an empty cell's mean (0) would win if it counted
    _, plan = mixer.within_batch(x, probs, valid=valid, generator=torch.Generator().manual_seed(seed))
    pair = F.pair_within_batch
    _, explicit = mixer(pair(x), pair(probs), valid=pair(valid), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plan.index, F.distinct_within_batch(explicit.index))
    own, partner = (F.patch_entropy(torch.zeros(B, H, W, device=device), grid, v, return_valid=True)[1] for v in pair(valid))
    wrong = (plan.index == 1) & own & ~partner
    assert not (wrong if B >= 3 else wrong[:1]).any()  # at B = 2 the second sample mirrors the first


@given(p=st.sampled_from([0.25, 0.5, 0.75]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=10)
def test_shared_cutmix_at_p_below_one_decides_per_sample(p, seed):
    """``shared=True`` shares the cube's position; whether a sample gets it is drawn per sample."""
    B = 400
    plan = CutMix(p=p, share=0.5, shared=True)([torch.zeros(B, 1, 8, 8, 6), torch.ones(B, 1, 8, 8, 6)],
                                                generator=torch.Generator().manual_seed(seed))[1]
    mixed = plan.index.flatten(1).any(1)
    assert abs(float(mixed.float().mean()) - p) < 6 * math.sqrt(p * (1 - p) / B)  # a share p of the samples
    cube = plan.index[mixed]
    assert bool((cube == cube[:1]).all()) and int(cube[0].sum()) == 4 * 4 * 3   # one cube for all of them


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 2), size=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)),
       divs=st.tuples(*[st.sampled_from([1, 2, 3])] * 3), K=st.integers(2, 4),
       select=st.sampled_from(["max", "min"]), seed=st.integers(0, 2**31 - 1))
def test_volume_valid_masks_at_another_resolution_are_resized_on_every_axis(B, size, divs, K, select, seed, device):
    """A volume mask coarser on any axis gives the plan of its full-resolution form, built here axis
    by axis from the grid rule (element i of an axis of n reads element floor(i * m / n) of m)."""
    g = torch.Generator().manual_seed(seed)
    coarse = tuple(-(-n // d) for n, d in zip(size, divs))
    valid = torch.rand(B, *coarse, generator=g) < 0.3
    full = valid
    for axis, (n, m) in enumerate(zip(size, coarse)):
        full = full.index_select(axis + 1, torch.div(torch.arange(n) * m, n, rounding_mode="floor"))
    x = [torch.rand(B, 1, *size, generator=g).to(device) for _ in range(2)]
    probs = [torch.rand(B, K, *size, generator=g).softmax(1).to(device) for _ in range(2)]
    mixer = EntropyMix(tuple(min(2, n) for n in size), select=select)
    _, from_coarse = mixer(x, probs=probs, valid=[valid.to(device), valid.to(device)])
    _, from_full = mixer(x, probs=probs, valid=[full.to(device), full.to(device)])
    assert torch.equal(from_coarse.index, from_full.index)


# --- issue 39: how much (share) apart from where (selection) ---------------------------------------

SHARES = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), st.floats(0, 1))


def float64_cells(probs, grid):
    """(V, B, gh, gw) float64 cell entropies from the definition: -sum p log p per pixel, averaged
    over each cell's pixels (cells by the grid rule, written out)."""
    out = []
    for q in probs:
        q = q.double().cpu()
        ent = -torch.where(q > 0, q * q.log(), 0.0).sum(1)
        B, h, w = ent.shape
        rows, cols = torch.tensor(naive_cells(h, grid[0])), torch.tensor(naive_cells(w, grid[1]))
        cells = torch.zeros(B, *grid, dtype=torch.float64)
        for i in range(grid[0]):
            for j in range(grid[1]):
                cells[:, i, j] = ent[:, rows == i][:, :, cols == j].mean((1, 2))
        out.append(cells)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 4), B=st.integers(1, 3), sg=sizes_and_grid(max_side=33), K=st.integers(2, 6),
       select=st.sampled_from(MODES), share=SHARES, p=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, sg=((321, 321), (4, 4)), K=21, select="max", share=0.1, p=1.0, seed=0)
@example(V=2, B=1, sg=((1, 1), (1, 1)), K=2, select="max", share=1.0, p=1.0, seed=0)
def test_share_is_realised_to_the_cell_and_pixels_are_conserved(V, B, sg, K, select, share, p, seed, device):
    (H, W), grid = sg
    views, probs, _ = make_batch(seed, V, B, 3, H, W, K, device=device)
    mixed, plan = EntropyMix(grid, select=select, p=p, share=share)(views, probs=probs,
                                                                    generator=torch.Generator().manual_seed(seed))
    check_conservation(mixed, views, plan)
    taken = (plan.index != 0).flatten(1).sum(1)
    n = grid[0] * grid[1]
    mixed_samples = taken > 0
    assert ((taken == math.floor(share * n + 0.5)) | ~mixed_samples).all()  # the requested cells, to the cell
    if p == 1.0:
        assert (taken == math.floor(share * n + 0.5)).all()


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 4), B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), K=st.integers(2, 6),
       select=st.sampled_from(["max", "min"]), share=SHARES, seed=st.integers(0, 2**31 - 1))
def test_share_takes_the_cells_of_widest_margin_by_a_float64_reference(V, B, sg, K, select, share, seed, device):
    """Every taken cell's margin (best other view over view 0, float64 from the definition) is at least
    every kept cell's, and it comes from that best view."""
    (H, W), grid = sg
    views, probs, _ = make_batch(seed, V, B, 1, H, W, K, device=device)
    _, plan = EntropyMix(grid, select=select, share=share)(views, probs=probs, generator=torch.Generator().manual_seed(seed))
    E = float64_cells(probs, grid)
    score = E if select == "max" else -E
    best, which = score[1:].max(0)
    margin = (best - score[0]).flatten(1)
    index = plan.index.cpu().flatten(1)
    taken = index != 0
    tol = 1e-5  # float32 cell means against float64: only near-ties may order differently
    for b in range(B):
        if taken[b].any() and (~taken[b]).any():
            assert float(margin[b][taken[b]].min()) >= float(margin[b][~taken[b]].max()) - tol
        clear = taken[b] & ((score[1:].flatten(2)[:, b] - best.flatten(1)[b]).abs() > tol).sum(0).eq(V - 2)
        assert torch.equal(index[b][clear], (which.flatten(1)[b] + 1)[clear])


@given(sg=sizes_and_grid(max_side=16), share=st.sampled_from([0.25, 0.5]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=10)
def test_random_placement_at_a_share_is_uniform_over_cells(sg, share, seed):
    """The control: the same number of cells, each cell equally likely, entropy unread."""
    (H, W), grid = sg
    n = grid[0] * grid[1]
    B = 2000
    x = [torch.zeros(B, 1, H, W), torch.ones(B, 1, H, W)]
    _, plan = EntropyMix(grid, select="random", share=share)(x, generator=torch.Generator().manual_seed(seed))
    count = math.floor(share * n + 0.5)
    assert ((plan.index != 0).flatten(1).sum(1) == count).all()
    freq = (plan.index != 0).float().mean(0)
    q = count / n
    assert (freq - q).abs().max() <= 6 * math.sqrt(q * (1 - q) / B) + 1e-9  # six binomial standard deviations


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(2, 3), B=st.integers(1, 3), sg=sizes_and_grid(max_side=24), K=st.integers(2, 5),
       select=st.sampled_from(["max", "min", "sample"]), share=SHARES, seed=st.integers(0, 2**31 - 1))
def test_share_never_takes_a_cell_empty_in_the_other_views(V, B, sg, K, select, share, seed, device):
    (H, W), grid = sg
    views, probs, g = make_batch(seed, V, B, 1, H, W, K, device=device)
    valid = [(torch.rand(B, H, W, generator=g) < 0.3).to(device) for _ in range(V)]
    _, plan = EntropyMix(grid, select=select, share=share)(views, probs=probs, valid=valid,
                                                          generator=torch.Generator().manual_seed(seed))
    cells = torch.stack([F.patch_entropy(torch.zeros(B, H, W, device=device), grid, m, return_valid=True)[1] for m in valid])
    nonempty_other = cells[1:].any(0) | ~cells.any(0)  # no view has a pixel: all compete alike
    src = plan.index
    assert not ((src != 0) & ~cells.gather(0, src[None])[0] & cells.any(0)).any()  # never an empty cell of its view
    eligible = nonempty_other.flatten(1).sum(1)
    want = torch.clamp(torch.full_like(eligible, math.floor(share * grid[0] * grid[1] + 0.5)), max=eligible)
    assert torch.equal((src != 0).flatten(1).sum(1), want)


@given(low=st.floats(0, 1), width=st.floats(0, 1), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_a_share_range_draws_each_samples_share_from_it(low, width, seed):
    high = min(1.0, low + width)
    B, grid = 300, (4, 5)
    x = [torch.zeros(B, 1, 8, 10), torch.ones(B, 1, 8, 10)]
    probs = [torch.rand(B, 3, 8, 10, generator=torch.Generator().manual_seed(seed)).softmax(1) for _ in range(2)]
    _, plan = EntropyMix(grid, share=(low, high))(x, probs=probs, generator=torch.Generator().manual_seed(seed))
    taken = (plan.index != 0).flatten(1).sum(1)
    assert (taken >= math.floor(low * 20 + 0.5)).all() and (taken <= math.floor(high * 20 + 0.5)).all()
    if high - low > 0.3:
        assert len(taken.unique()) > 3  # drawn per sample


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), size=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)),
       share=SHARES, select=st.sampled_from(MODES), seed=st.integers(0, 2**31 - 1))
def test_share_on_volumes_and_within_batch(B, size, share, select, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, *size, generator=g).to(device)
    logits = torch.randn(B, 3, *size, generator=g).to(device)
    grid = tuple(min(2, n) for n in size)
    mixer = EntropyMix(grid, select=select, share=share)
    mixed, plan = mixer([x, x.flip(0)], logits=[logits, logits.flip(0)], generator=torch.Generator().manual_seed(seed))
    assert ((plan.index != 0).flatten(1).sum(1) == math.floor(share * 8 + 0.5)).all()
    assert torch.equal(mixed, plan.apply([x, x.flip(0)]))
    mixed, plan = mixer.within_batch(x, logits=logits, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(mixed, plan.apply(F.pair_within_batch(x)))
    if B >= 2:
        assert not any(torch.equal(mixed[a], mixed[b]) for a in range(B) for b in range(a))


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
@given(V=st.integers(2, 3), B=st.integers(1, 2), sg=sizes_and_grid(max_side=24), K=st.integers(2, 5),
       select=st.sampled_from(MODES), share=SHARES, use_logits=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_share_plans_are_the_same_under_autocast(V, B, sg, K, select, share, use_logits, seed, device, amp_dtype):
    (H, W), grid = sg
    views, probs, _ = make_batch(seed, V, B, 1, H, W, K, device=device)
    maps = {"logits": [q.log() for q in probs]} if use_logits else {"probs": probs}
    mixer = EntropyMix(grid, select=select, share=share)
    _, plain = mixer(views, **maps, generator=torch.Generator().manual_seed(seed))
    with torch.autocast(device, dtype=amp_dtype):
        _, amp = mixer(views, **maps, generator=torch.Generator().manual_seed(seed))
    assert plain == amp


def test_share_errors_name_the_argument():
    for bad in (1.5, -0.1, math.nan, (0.5, 0.2), (0.1, 2.0), (0.1,), "half"):
        with pytest.raises(ValueError, match=r"share must be"):
            EntropyMix(share=bad)
    assert EntropyMix(share=(0.1, 0.3)).share == (0.1, 0.3)
    assert "share=0.25" in repr(EntropyMix(share=0.25)) and "share" not in repr(EntropyMix())
