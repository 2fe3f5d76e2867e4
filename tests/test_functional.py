import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from entropymix import EntropyMix
from entropymix import functional as F
from conftest import DEVICES
from strategies import FLOAT_DTYPES, naive_cells, random_probs, sizes_and_grid


def naive_entropy(p):
    p = p.double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(p), 0.0)
    return t.sum(1)


def naive_patch_entropy(ent, grid, valid=None):
    """Per-cell mean over valid pixels with explicit loops (float64); None for empty cells."""
    B, h, w = ent.shape
    gh, gw = grid
    rows, cols = naive_cells(h, gh), naive_cells(w, gw)
    sums = np.zeros((B, gh, gw))
    counts = np.zeros((B, gh, gw))
    e = ent.double().numpy()
    m = np.ones((B, h, w), bool) if valid is None else valid.numpy()
    for b in range(B):
        for y in range(h):
            for x in range(w):
                if m[b, y, x]:
                    sums[b, rows[y], cols[x]] += e[b, y, x]
                    counts[b, rows[y], cols[x]] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts > 0


@pytest.mark.parametrize("device", DEVICES)
# --- entropy -----------------------------------------------------------------------------------

@given(B=st.integers(1, 3), K=st.integers(1, 12), h=st.integers(1, 17), w=st.integers(1, 17),
       dtype=st.sampled_from(FLOAT_DTYPES), seed=st.integers(0, 2**31 - 1))
def test_entropy_matches_definition_and_bounds(B, K, h, w, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    p = random_probs(g, (B, K, h, w), dtype).to(device)
    before = p.clone()
    H = F.entropy(p)
    assert H.shape == (B, h, w) and H.dtype == torch.float32
    assert torch.equal(p, before)  # not modified in place
    np.testing.assert_allclose(H.double().cpu().numpy(), naive_entropy(p.cpu()), rtol=1e-5, atol=1e-5)
    # rounding to half precision moves p slightly off the simplex, and H with it
    slack = 1e-5 if dtype == torch.float32 else 0.02
    assert (H >= 0).all() and (H <= math.log(K) + slack).all()


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), K=st.integers(1, 12), h=st.integers(1, 9), w=st.integers(1, 9),
       scale=st.sampled_from([0.1, 1.0, 30.0, 1e4]), seed=st.integers(0, 2**31 - 1))
def test_entropy_from_logits_equals_entropy_of_softmax(B, K, h, w, scale, seed, device):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, K, h, w, generator=g) * scale).to(device)
    H = F.entropy_from_logits(z)
    assert torch.isfinite(H).all() and (H >= 0).all() and (H <= math.log(K) + 1e-5).all()
    np.testing.assert_allclose(H.cpu().numpy(), naive_entropy(z.cpu().double().softmax(1)), rtol=1e-4, atol=1e-5)


@given(B=st.integers(1, 5), K=st.integers(1, 9), h=st.integers(1, 13), w=st.integers(1, 13),
       chunk=st.sampled_from([1, 7, 100, 1 << 22]), dtype=st.sampled_from(FLOAT_DTYPES),
       seed=st.integers(0, 2**31 - 1))
# In every profile: 5 rows in chunks of 2 (18 elements a row, 36 a chunk): the last chunk is partial.
@example(B=5, K=2, h=3, w=3, chunk=36, dtype=torch.float32, seed=0)
def test_eager_entropy_in_chunks_is_bit_identical_to_one_pass(B, K, h, w, chunk, dtype, seed):
    """The eager path's batch chunking changes memory, never a value (entropies and check maps)."""
    g = torch.Generator().manual_seed(seed)
    p = random_probs(g, (B, K, h, w), dtype)
    p[0, 0, 0, 0] = -0.25 if B > 1 else p[0, 0, 0, 0]  # a failing pixel in one chunk
    z = (torch.randn(B, K, h, w, generator=g) * 30).to(dtype)
    ent, bad, _ = F._eager_stats("probs", p, True, chunk)
    total = p.float().sum(1)
    naive_bad = ~torch.isfinite(total) | (p < 0).any(1) | ((total - 1).abs() > F.SIMPLEX_TOLERANCE)
    assert torch.equal(ent, torch.special.entr(p.float()).sum(1)) and torch.equal(bad, naive_bad)
    for z in (z, p):  # logits, and probabilities passed as logits
        ent, bad, looks = F._eager_stats("logits", z, True, chunk)
        zf = z.float()
        naive_looks = (zf >= 0).all(1) & (zf <= 1).all(1) & ((zf.sum(1) - 1).abs() <= F.SIMPLEX_TOLERANCE)
        assert torch.equal(ent, F._logits_entropy(z)) and torch.equal(bad, ~torch.isfinite(zf.amax(1)))
        assert torch.equal(looks, naive_looks[:1])  # judged on the first sample


def test_entropy_edge_cases_one_hot_uniform_and_minus_inf():
    K = 5
    onehot = torch.nn.functional.one_hot(torch.arange(K), K).float().T.reshape(1, K, 1, K)
    assert torch.equal(F.entropy(onehot), torch.zeros(1, 1, K))
    uniform = torch.full((2, K, 3, 3), 1 / K)
    torch.testing.assert_close(F.entropy(uniform), torch.full((2, 3, 3), math.log(K)))
    z = torch.tensor([0.0, -math.inf, 1e4, -1e4]).reshape(1, 4, 1, 1)
    H = F.entropy_from_logits(z)
    assert torch.isfinite(H).all() and H.item() == 0.0


def test_entropy_value_checks():
    p = torch.full((1, 3, 2, 2), 1 / 3)
    with pytest.raises(ValueError, match=r"probs.*non-finite.*\(1, 3, 2, 2\)"):
        F.entropy(p.clone().index_fill_(2, torch.tensor([0]), math.nan))
    with pytest.raises(ValueError, match=r"probs must be probabilities.*\(1, 3, 2, 2\)"):
        F.entropy(p * 2)
    with pytest.raises(ValueError, match="probs must be probabilities"):
        F.entropy(p - 0.5)
    F.entropy(p * 2, check_values=False)  # the caller switched the check off
    with pytest.raises(ValueError, match=r"probs must be 4-D, got shape \(3, 2, 2\)"):
        F.entropy(p[0])
    with pytest.raises(TypeError, match="probs must be a floating-point tensor"):
        F.entropy(p.long())
    with pytest.raises(ValueError, match=r"logits contains NaN"):
        F.entropy_from_logits(torch.full((1, 2, 1, 1), math.nan))


# --- grid rule, resize -------------------------------------------------------------------------

@given(h=st.integers(1, 50), w=st.integers(1, 50), H=st.integers(1, 80), W=st.integers(1, 80),
       dtype=st.sampled_from([torch.bool, torch.uint8, torch.int64, torch.float16]))
def test_resize_nearest_follows_the_grid_rule(h, w, H, W, dtype):
    x = (torch.arange(2 * h * w).reshape(2, h, w) % 7).to(dtype)
    out = F.resize_nearest(x, (H, W))
    assert out.shape == (2, H, W) and out.dtype == dtype
    rows, cols = naive_cells(H, h), naive_cells(W, w)
    ref = x[:, rows][:, :, cols]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("device", DEVICES)
# --- patch entropy -----------------------------------------------------------------------------

@given(sg=sizes_and_grid(max_side=24), B=st.integers(1, 2), use_valid=st.booleans(),
       valid_res=st.sampled_from(["same", "half", "double"]), seed=st.integers(0, 2**31 - 1))
@example(sg=((321, 321), (4, 4)), B=1, use_valid=True, valid_res="same", seed=0)
@example(sg=((1, 1), (1, 1)), B=1, use_valid=True, valid_res="same", seed=0)
def test_patch_entropy_is_the_mean_over_valid_pixels(sg, B, use_valid, valid_res, seed, device):
    (h, w), grid = sg
    g = torch.Generator().manual_seed(seed)
    ent = (torch.rand(B, h, w, generator=g) * 3).to(device)
    valid = None
    if use_valid:
        vh, vw = {"same": (h, w), "half": (max(1, h // 2), max(1, w // 2)), "double": (2 * h, 2 * w)}[valid_res]
        valid = (torch.rand(B, vh, vw, generator=g) < 0.6).to(device)
    E, nonempty = F.patch_entropy(ent, grid, valid, return_valid=True)
    assert E.shape == (B, *grid) and E.dtype == torch.float32 and torch.isfinite(E).all()
    full_valid = None if valid is None else F.resize_nearest(valid, (h, w))
    ref, ref_nonempty = naive_patch_entropy(ent.cpu(), grid, None if full_valid is None else full_valid.cpu())
    np.testing.assert_allclose(E.cpu().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(nonempty.cpu().numpy(), ref_nonempty)


def test_patch_entropy_errors():
    with pytest.raises(ValueError, match=r"grid \(5, 5\) is larger than the entropy map \(4, 4\)"):
        F.patch_entropy(torch.rand(1, 4, 4), (5, 5))
    with pytest.raises(TypeError, match=r"valid must be a bool mask or an integer label map .*torch.float32 \(1, 4, 4\)"):
        F.patch_entropy(torch.rand(1, 4, 4), 2, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"valid must have shape.*got \(2, 4, 4\)"):
        F.patch_entropy(torch.rand(1, 4, 4), 2, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="grid must be an int or a pair"):
        F.patch_entropy(torch.rand(1, 4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match="grid must be positive"):
        F.patch_entropy(torch.rand(1, 4, 4), (0, 2))


# --- selection ---------------------------------------------------------------------------------

@given(V=st.integers(1, 5), B=st.integers(1, 3), gh=st.integers(1, 6), gw=st.integers(1, 6),
       ties=st.booleans(), use_valid=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_select_max_and_min_pick_extremes_among_nonempty_cells(V, B, gh, gw, ties, use_valid, seed):
    g = torch.Generator().manual_seed(seed)
    E = torch.rand(V, B, gh, gw, generator=g)
    if ties:
        E = (E * 3).floor()  # many exact ties
    valid = (torch.rand(V, B, gh, gw, generator=g) < 0.5) if use_valid else None
    for mode, sign in (("max", 1), ("min", -1)):
        idx = F.select_views(E, mode, valid=valid)
        assert idx.shape == (B, gh, gw) and idx.dtype == torch.int64
        eligible = torch.ones_like(E, dtype=torch.bool) if valid is None else valid | ~valid.any(0)
        score = torch.where(eligible, sign * E, -math.inf)
        best = score.max(0).values
        chosen = score.gather(0, idx[None])[0]
        assert torch.equal(chosen, best)
        # ties go to the lowest view index
        first_best = (score == best[None]).float().argmax(0)
        assert torch.equal(idx, first_best)
        if valid is not None:  # an empty cell never beats a non-empty one
            has_any = valid.any(0)
            assert valid.gather(0, idx[None])[0][has_any].all()


@given(V=st.integers(2, 4), T=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 1000))
def test_select_sample_follows_softmax_and_random_is_uniform(V, T, seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.rand(V, generator=g) * 2
    E = e[:, None, None, None].expand(V, 64, 32, 32).contiguous()  # 65536 cells, same entropies
    idx = F.select_views(E, "sample", T, torch.Generator().manual_seed(seed))
    freq = torch.bincount(idx.flatten(), minlength=V).double() / idx.numel()
    target = (e.double() / T).softmax(0)
    assert (freq - target).abs().max() < 0.01
    idx = F.select_views(E, "random", generator=torch.Generator().manual_seed(seed))
    freq = torch.bincount(idx.flatten(), minlength=V).double() / idx.numel()
    assert (freq - 1 / V).abs().max() < 0.01


def test_select_sample_respects_valid_and_generator():
    E = torch.rand(3, 4, 5, 5)
    valid = torch.zeros(3, 4, 5, 5, dtype=torch.bool)
    valid[2] = True
    idx = F.select_views(E, "sample", 1.0, torch.Generator().manual_seed(0), valid=valid)
    assert (idx == 2).all()
    a = F.select_views(E, "sample", 1.0, torch.Generator().manual_seed(3))
    b = F.select_views(E, "sample", 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_select_errors():
    E = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        F.select_views(E, "median")
    with pytest.raises(ValueError, match="temperature must be"):
        F.select_views(E, "sample", 0.0)
    with pytest.raises(ValueError, match=r"patch_entropy must be 4-D, got shape \(1, 2, 2\)"):
        F.select_views(E[0])
    with pytest.raises(ValueError, match=r"valid must be a bool tensor shaped like patch_entropy"):
        F.select_views(E, valid=torch.ones(2, 1, 2, 3, dtype=torch.bool))


@pytest.mark.parametrize("device", DEVICES)
# --- apply_plan --------------------------------------------------------------------------------

@given(V=st.integers(1, 4), B=st.integers(1, 3), sg=sizes_and_grid(max_side=30),
       out_size=st.tuples(st.integers(1, 40), st.integers(1, 40)), channels=st.sampled_from([None, 1, 3]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]),
       seed=st.integers(0, 2**31 - 1))
@example(V=2, B=2, sg=((321, 321), (4, 4)), out_size=(321, 321), channels=3, dtype=torch.float32, seed=1)
@example(V=2, B=1, sg=((1, 1), (1, 1)), out_size=(1, 1), channels=None, dtype=torch.int64, seed=1)
def test_apply_plan_is_a_pure_gather_by_the_grid_rule(V, B, sg, out_size, channels, dtype, seed, device):
    _, grid = sg
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, V, (B, *grid), generator=g).to(device)
    h, w = out_size
    shape = (B, h, w) if channels is None else (B, channels, h, w)
    tensors = [(torch.randn(shape, generator=g) * 100).to(device=device, dtype=dtype) for _ in range(V)]
    before = [t.clone() for t in tensors]
    out = F.apply_plan(index, tensors)
    assert out.shape == shape and out.dtype == dtype
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))
    assert all(out.data_ptr() != t.data_ptr() for t in tensors)  # a new tensor, never an alias (V = 1 too)
    rows, cols = naive_cells(h, grid[0]), naive_cells(w, grid[1])
    src = index[:, rows][:, :, cols]  # (B, h, w)
    stacked = torch.stack(tensors)
    sel = src[None] if channels is None else src[None, :, None].expand(1, B, channels, h, w)
    ref = stacked.gather(0, sel)[0]
    assert torch.equal(out, ref)


def test_apply_plan_errors():
    idx = torch.zeros(2, 2, 2, dtype=torch.long)
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"tensors must share shape.*tensors\[1\] is \(2, 3, 4, 5\)"):
        F.apply_plan(idx, [x, torch.rand(2, 3, 4, 5)])
    with pytest.raises(ValueError, match=r"batch size mismatch: index \(2, 2, 2\) vs tensors \(3, 3, 4, 4\)"):
        F.apply_plan(idx, [torch.rand(3, 3, 4, 4)] * 2)
    with pytest.raises(TypeError, match="index must be int64"):
        F.apply_plan(idx.int(), [x, x])
    with pytest.raises(TypeError, match="tensors must be a list or tuple"):
        F.apply_plan(idx, x)
    with pytest.raises(ValueError, match="the plan mixes 3 views but 2 tensors"):
        F.apply_plan(idx, [x, x], num_views=3)
    with pytest.raises(ValueError, match=r"tensors\[0\] must be 3-D or 4-D, got shape \(2, 4\)"):
        F.apply_plan(idx, [x[:, 0, 0], x[:, 0, 0]])


# --- cutmix boxes ------------------------------------------------------------------------------

def unimatch_box(rng, size, size_min=0.02, size_max=0.4, r1=0.3, r2=1 / 0.3):
    """UniMatch's obtain_cutmix_box (p=1), as a reference for the batched sampler."""
    area = rng.uniform(size_min, size_max) * size * size
    while True:
        ratio = rng.uniform(r1, r2)
        bw, bh = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
        x, y = rng.integers(0, size), rng.integers(0, size)
        if x + bw <= size and y + bh <= size:
            return bh, bw, y, x


@given(B=st.integers(0, 6), H=st.integers(1, 64), W=st.integers(1, 64), p=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_cutmix_boxes_are_boxes_inside_the_image(B, H, W, p, seed):
    m = F.cutmix_boxes(B, (H, W), p, generator=torch.Generator().manual_seed(seed))
    assert m.shape == (B, H, W) and m.dtype == torch.int64
    assert ((m == 0) | (m == 1)).all()
    if p == 0.0:
        assert (m == 0).all()
    for b in range(B):  # the ones form one axis-aligned rectangle
        ys, xs = torch.where(m[b] == 1)
        if len(ys):
            box = m[b, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            assert (box == 1).all() and box.numel() == len(ys)
            assert len(ys) <= 0.4 * H * W + 1e-9


def test_cutmix_boxes_match_unimatch_statistics():
    S, n = 64, 4000
    m = F.cutmix_boxes(n, (S, S), 1.0, generator=torch.Generator().manual_seed(0))
    rows = m.any(2).sum(1).double()
    cols = m.any(1).sum(1).double()
    rng = np.random.default_rng(0)
    ref = np.array([unimatch_box(rng, S) for _ in range(n)], dtype=float)
    # area, aspect and centre position agree with the rejection sampler (standard errors ~0.5%)
    area, ref_area = (rows * cols).mean().item() / S**2, (ref[:, 0] * ref[:, 1]).mean() / S**2
    assert abs(area - ref_area) < 0.01
    aspect, ref_aspect = (rows / cols.clamp_min(1)).mean().item(), (ref[:, 0] / np.maximum(ref[:, 1], 1)).mean()
    assert abs(aspect - ref_aspect) / ref_aspect < 0.05
    y0 = m.any(2).double().argmax(1).double()
    assert abs((y0 + rows / 2).mean().item() - (ref[:, 2] + ref[:, 0] / 2).mean()) < 0.02 * S


def test_cutmix_boxes_errors():
    with pytest.raises(ValueError, match="p must be in"):
        F.cutmix_boxes(1, (4, 4), p=1.5)
    with pytest.raises(ValueError, match="size_min <= size_max"):
        F.cutmix_boxes(1, (4, 4), size_min=0.5, size_max=0.1)
    with pytest.raises(ValueError, match="ratio must be"):
        F.cutmix_boxes(1, (4, 4), ratio=(2.0, 1.0))


@pytest.mark.parametrize("total", [0.9, 0.5, 1.1, 0.0])
@pytest.mark.parametrize("kind", ["entropy", "entropymix"])
def test_probability_rows_off_the_simplex_below_or_above_are_rejected(total, kind):
    """Rows summing to less than 1 beyond the tolerance fail like rows summing to more."""
    p = torch.full((2, 4, 3, 3), 0.25)
    p[1, :, 2, 1] = total / 4
    with pytest.raises(ValueError, match="must be probabilities"):
        if kind == "entropy":
            F.entropy(p)
        else:
            EntropyMix(1)([torch.rand(2, 3, 3, 3)] * 2, probs=[torch.full_like(p, 0.25), p])
    ok = torch.full((2, 4, 3, 3), 0.25)
    ok[1, :, 2, 1] = (1 - F.SIMPLEX_TOLERANCE / 2) / 4  # inside the tolerance: accepted
    F.entropy(ok)


# --- volumes: every op over 3 spatial dims, the grid rule per axis -------------------------------------

vol_sizes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 7))


@given(have=vol_sizes, want=vol_sizes)
def test_resize_nearest_follows_the_grid_rule_per_axis(have, want):
    x = torch.arange(math.prod(have)).view(1, *have)
    out = F.resize_nearest(x, want)
    idx = [naive_cells(n, m) for m, n in zip(have, want)]  # output element i reads floor(i * m / n)
    assert torch.equal(out[0], x[0][idx[0]][:, idx[1]][:, :, idx[2]])


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 2), size=vol_sizes, data=st.data(), use_valid=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_patch_entropy_of_volumes_is_the_mean_over_valid_voxels(B, size, data, use_valid, seed, device):
    grid = tuple(data.draw(st.integers(1, min(n, 4))) for n in size)
    g = torch.Generator().manual_seed(seed)
    ent = torch.rand(B, *size, generator=g, dtype=torch.float64)
    valid = torch.rand(B, *size, generator=g) < 0.6 if use_valid else torch.ones(B, *size, dtype=torch.bool)
    means, nonempty = F.patch_entropy(ent.to(device), grid, valid.to(device) if use_valid else None, return_valid=True)
    assert means.shape == (B, *grid) and means.dtype == torch.float32
    cells = [torch.tensor(naive_cells(n, gd)) for n, gd in zip(size, grid)]
    for b in range(B):
        for c in torch.cartesian_prod(*[torch.arange(gd) for gd in grid]).view(-1, 3):
            sel = valid[b] & (cells[0][:, None, None] == c[0]) & (cells[1][None, :, None] == c[1]) & (cells[2][None, None] == c[2])
            want = ent[b][sel].mean() if sel.any() else torch.tensor(0.0, dtype=torch.float64)
            assert bool(nonempty[b][tuple(c)]) == bool(sel.any())
            torch.testing.assert_close(means[b][tuple(c)].double().cpu(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), size=vol_sizes, p=st.sampled_from([0.0, 1.0]), share=st.sampled_from([None, 2 / 3, 1.0]),
       shared=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(B=8, size=(112, 112, 80), p=1.0, share=2 / 3, shared=True, seed=0)   # BCP's LA patches
def test_cutmix_boxes_of_volumes_are_cuboids_inside_the_volume(B, size, p, share, shared, seed, device):
    boxes = F.cutmix_boxes(B, size, p, share=share, shared=shared, generator=torch.Generator().manual_seed(seed),
                           device=device).cpu()
    assert boxes.shape == (B, *size) and boxes.dtype == torch.int64
    for b in range(B):
        m = boxes[b].bool()
        if p == 0.0:
            assert not m.any()
            continue
        spans = [m.any(dim=tuple(e for e in range(3) if e != d)) for d in range(3)]
        cuboid = spans[0][:, None, None] & spans[1][None, :, None] & spans[2][None, None, :]
        assert torch.equal(m, cuboid)  # exactly the cuboid its extents span (contiguous by construction below)
        for span in spans:
            idx = span.nonzero().flatten()
            assert idx.numel() == 0 or idx.numel() == int(idx[-1] - idx[0] + 1)
        if share is not None:
            assert [int(s.sum()) for s in spans] == [max(1, math.floor(share * n)) for n in size]
        else:
            assert float(m.float().mean()) <= 0.4 + 1e-9
    if shared and p == 1.0:
        assert all(torch.equal(boxes[0], boxes[b]) for b in range(B))


@pytest.mark.parametrize("device", DEVICES)
@given(V=st.integers(1, 3), B=st.integers(1, 2), grid=vol_sizes, scale=st.tuples(*[st.integers(1, 3)] * 3),
       channels=st.sampled_from([None, 2]), seed=st.integers(0, 2**31 - 1))
def test_apply_plan_on_volumes_is_a_pure_gather_by_the_grid_rule(V, B, grid, scale, channels, seed, device):
    g = torch.Generator().manual_seed(seed)
    size = tuple(gd * s + s // 2 for gd, s in zip(grid, scale))  # ragged: not a multiple of the grid
    index = torch.randint(0, V, (B, *grid), generator=g)
    shape = (B, *size) if channels is None else (B, channels, *size)
    tensors = [torch.randint(0, 1000, shape, generator=g) for _ in range(V)]
    out = F.apply_plan(index.to(device), [t.to(device) for t in tensors]).cpu()
    cells = [naive_cells(n, gd) for n, gd in zip(size, grid)]
    src = index[:, cells[0]][:, :, cells[1]][:, :, :, cells[2]]
    ref = torch.stack(tensors).gather(0, (src if channels is None else src[:, None].expand(shape))[None])[0]
    assert torch.equal(out, ref) and torch.equal(F.source_map(index, size), src)


def cuboid_reference(rng, size, size_min=0.02, size_max=0.4, r1=0.3, r2=1 / 0.3):
    """The documented 3-D statistics, sample by sample with rejection: volume U(size_min, size_max)
    of the whole, side_0 / side_d = U(r1, r2) for d = 1, 2, corner uniform where the cuboid fits."""
    amount = rng.uniform(size_min, size_max) * np.prod(size)
    while True:
        r = rng.uniform(r1, r2, size=2)
        first = (amount * r[0] * r[1]) ** (1 / 3)
        sides = [int(first), int(first / r[0]), int(first / r[1])]
        corner = [rng.integers(0, n) for n in size]
        if all(c + s <= n for c, s, n in zip(corner, sides, size)):
            return sides + corner


def test_cutmix_cuboids_match_the_documented_statistics():
    size, n = (40, 32, 24), 3000
    m = F.cutmix_boxes(n, size, 1.0, generator=torch.Generator().manual_seed(0)).bool()
    sides = torch.stack([m.any(dim=tuple(e for e in range(1, 4) if e != d)).sum(1) for d in range(1, 4)], 1).double()
    corner = torch.stack([m.any(dim=tuple(e for e in range(1, 4) if e != d)).double().argmax(1) for d in range(1, 4)], 1)
    rng = np.random.default_rng(0)
    ref = np.array([cuboid_reference(rng, size) for _ in range(n)], dtype=float)
    share, ref_share = sides.prod(1).mean().item() / np.prod(size), ref[:, :3].prod(1).mean() / np.prod(size)
    assert abs(share - ref_share) < 0.01
    for d in (1, 2):  # each aspect side_0 / side_d
        got = (sides[:, 0] / sides[:, d].clamp_min(1)).mean().item()
        want = (ref[:, 0] / np.maximum(ref[:, d], 1)).mean()
        assert abs(got - want) / want < 0.05
    for d in range(3):  # centre positions
        got = (corner[:, d] + sides[:, d] / 2).mean().item()
        assert abs(got - (ref[:, 3 + d] + ref[:, d] / 2).mean()) < 0.02 * size[d]


@pytest.mark.parametrize("far_edge", [True, False])
def test_bcp_cuboids_reach_every_position_where_they_fit(far_edge):
    """Every start where the cube fits (``far_edge=False``, BCP's ``context_mask``: all but the one
    flush with the far edge; a cube as long as its axis starts at 0)."""
    size, share = (6, 5, 4), 2 / 3
    m = F.cutmix_boxes(400, size, 1.0, share=share, far_edge=far_edge, generator=torch.Generator().manual_seed(0)).bool()
    for d in range(3):
        span = m.any(dim=tuple(e for e in range(1, 4) if e != d + 1))
        side = math.floor(share * size[d])
        assert (span.sum(1) == side).all()
        last = size[d] - side if far_edge else max(0, size[d] - side - 1)
        assert set(span.double().argmax(1).tolist()) == set(range(last + 1))
    whole = F.cutmix_boxes(3, (4, 4), 1.0, share=1.0, far_edge=far_edge)
    assert bool(whole.all())


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=3), volume=st.booleans(),
       size=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 5)), data=st.data(),
       masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_patch_entropy_takes_any_number_of_leading_dims(lead, volume, size, data, masked, seed):
    """``(*, h, w)`` / ``(*, x, y, z)`` with any leading dims (none, or views x batch, ...): each
    map's cells are what the map alone gives."""
    if volume and not lead:
        lead = [1]  # a 3-D grid needs a leading dim, (B, x, y, z): (x, y, z) alone is a batch of 2-D maps
    spatial = size if volume else size[:2]
    grid = tuple(data.draw(st.integers(1, n)) for n in spatial)
    g = torch.Generator().manual_seed(seed)
    ent = torch.rand(*lead, *spatial, generator=g)
    valid = torch.rand(*lead, *spatial, generator=g) < 0.6 if masked else None
    means, nonempty = F.patch_entropy(ent, grid, valid, return_valid=True)
    assert means.shape == (*lead, *grid) and nonempty.shape == means.shape
    flat_ent = ent.reshape(-1, *spatial)
    flat_valid = None if valid is None else valid.reshape(-1, *spatial)
    for i in range(flat_ent.shape[0]):
        one, one_nonempty = F.patch_entropy(flat_ent[i:i + 1], grid, None if valid is None else flat_valid[i:i + 1],
                                            return_valid=True)
        assert torch.allclose(means.reshape(-1, *grid)[i], one[0], rtol=1e-6, atol=1e-7)
        assert torch.equal(nonempty.reshape(-1, *grid)[i], one_nonempty[0])


@given(B=st.integers(1, 3), K=st.integers(1, 8), h=st.integers(1, 6), w=st.integers(1, 6),
       scale=st.sampled_from([0.01, 1.0, 30.0, 1e4]), masked=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_logit_entropy_is_bit_identical_to_its_where_form(B, K, h, w, scale, masked, seed):
    """The in-place product with NaNs zeroed gives, bit for bit (signed zeros included), the entropy of
    ``where(logp > -inf, -p * logp, 0).sum(1)``, the form the recorded outputs were made with."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, K, h, w, generator=g) * scale
    z[:, :min(masked, K - 1)] = -math.inf  # classes masked out, one left
    logp = torch.log_softmax(z, dim=1)
    want = torch.where(logp > -math.inf, -logp.exp() * logp, 0.0).sum(1)
    got = F._logits_entropy(z)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)) or K == 1  # K = 1: +0 where it gave -0
