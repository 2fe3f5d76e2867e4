import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from entropymix import SPEEDLoss, logit_distillation, relation_distillation
from entropymix.functional import resize_nearest
from conftest import AUTOCAST, DEVICES


def naive_relation(fs, ft, valid):
    """The definition, image by image: boolean-indexed pixels, explicit N x N affinities (float64)."""
    losses = []
    for b in range(fs.shape[0]):
        m = valid[b].flatten()
        if not m.any():
            continue
        a = torch.nn.functional.normalize(fs[b].double().flatten(1).T[m], dim=1)
        c = torch.nn.functional.normalize(ft[b].double().flatten(1).T[m], dim=1)
        losses.append(((a @ a.T - c @ c.T) ** 2).sum() / m.sum() ** 2)
    return torch.stack(losses).mean() if losses else torch.zeros((), dtype=torch.float64, device=fs.device)


def naive_kd(s, t, valid, T, weighting):
    s, t = s.double(), t.double()
    K = s.shape[1]
    q = (t / T).softmax(1)
    kl = (q * ((t / T).log_softmax(1) - (s / T).log_softmax(1))).sum(1) * T * T
    if weighting and K > 1:
        pt = t.softmax(1)
        kl = kl * (1 + (pt * pt.log()).nan_to_num().sum(1) / math.log(K))
    return kl[valid].sum() / max(1, int(valid.sum()))


features = st.tuples(st.integers(1, 3), st.integers(1, 24), st.integers(1, 24), st.integers(1, 9), st.integers(1, 9))


@pytest.mark.parametrize("device", DEVICES)
@given(shape=features, p_valid=st.sampled_from([0.0, 0.3, 1.0]), scale=st.sampled_from([0.1, 1.0]),
       seed=st.integers(0, 2**31 - 1))
@example(shape=(2, 8, 8, 33, 33), p_valid=0.7, scale=1.0, seed=0)    # N > D
@example(shape=(2, 64, 16, 3, 3), p_valid=1.0, scale=1.0, seed=0)    # N < D
@example(shape=(1, 1, 1, 1, 1), p_valid=1.0, scale=1.0, seed=0)
def test_relation_exact_forms_equal_the_naive_definition(shape, p_valid, scale, seed, device):
    B, Ds, Dt, h, w = shape
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, Ds, h, w, generator=g, dtype=torch.float64).to(device)
    ft = (torch.randn(B, Dt, h, w, generator=g, dtype=torch.float64) * scale).to(device)
    valid = (torch.rand(B, h, w, generator=g) < p_valid).to(device)
    ref = naive_relation(fs, ft, valid)
    for method in ("gram", "naive", "auto"):
        out = relation_distillation(fs, ft, valid, method=method)
        assert out.dtype == torch.float64 and out >= -1e-12
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    out32 = relation_distillation(fs.float(), ft.float(), valid)  # float32 inputs: tight relative tolerance
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@given(shape=features, seed=st.integers(0, 2**31 - 1))
def test_relation_gradients_match_the_naive_form(shape, seed, device):
    B, Ds, Dt, h, w = shape
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, Ds, h, w, generator=g, dtype=torch.float64).to(device)
    ft = torch.randn(B, Dt, h, w, generator=g, dtype=torch.float64).to(device).requires_grad_()
    valid = (torch.rand(B, h, w, generator=g) < 0.7).to(device)
    grads = []
    for method in ("gram", "naive"):
        x = fs.clone().requires_grad_()
        relation_distillation(x, ft, valid, method=method).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    assert ft.grad is None  # the teacher never receives a gradient


def test_gradcheck_both_terms():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    valid = torch.rand(2, 3, 4, generator=g) < 0.7
    for method in ("gram", "naive"):
        assert torch.autograd.gradcheck(lambda x: relation_distillation(x, ft, valid, method=method), (fs,))
    s = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: logit_distillation(x, t, temperature=2.0), (s,))


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), K=st.integers(1, 8), h=st.integers(1, 9), w=st.integers(1, 9),
       T=st.sampled_from([0.5, 1.0, 4.0]), weighting=st.booleans(), p_valid=st.sampled_from([0.0, 0.5, 1.0]),
       scale=st.sampled_from([0.1, 3.0, 1e4]), seed=st.integers(0, 2**31 - 1))
def test_logit_distillation_matches_definition(B, K, h, w, T, weighting, p_valid, scale, seed, device):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, K, h, w, generator=g) * scale).to(device)
    t = (torch.randn(B, K, h, w, generator=g) * scale).to(device)
    valid = (torch.rand(B, h, w, generator=g) < p_valid).to(device)
    s.requires_grad_()
    out = logit_distillation(s, t, valid, temperature=T, entropy_weighting=weighting)
    assert out.dtype == torch.float32 and torch.isfinite(out) and out >= 0
    ref = naive_kd(s.detach(), t, valid, T, weighting)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * max(1.0, scale / 100))
    out.backward()
    assert torch.isfinite(s.grad).all()


@given(K=st.integers(2, 10), seed=st.integers(0, 2**31 - 1), sharp=st.sampled_from([0.0, 1.0, 50.0]))
def test_entropy_weights_are_in_unit_interval(K, seed, sharp):
    """On one pixel the weighted loss is w * unweighted, with w = 1 - H(teacher) / log K in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, K, 1, 1, generator=g)
    t = torch.randn(1, K, 1, 1, generator=g) * sharp
    weighted = logit_distillation(s, t, entropy_weighting=True).double()
    plain = logit_distillation(s, t, entropy_weighting=False).double()
    p = t.double().softmax(1)
    w = 1 + (p * p.log()).nan_to_num().sum() / math.log(K)
    assert -1e-6 <= w <= 1 + 1e-6
    # The library's weight is float32: 1 - H / log K carries ~1e-7 absolute rounding, times the loss.
    torch.testing.assert_close(weighted, w * plain, rtol=1e-4, atol=2e-7 * max(1.0, float(plain)))
    if sharp == 0.0:  # a uniform teacher carries no knowledge: weight 0
        assert weighted.abs() < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), D=st.integers(1, 16), K=st.integers(1, 6), h=st.integers(1, 12), w=st.integers(1, 12),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**31 - 1))
def test_zero_when_student_equals_teacher_and_no_teacher_gradient(B, D, K, h, w, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, h, w, generator=g).to(device=device, dtype=dtype)
    z = (torch.randn(B, K, h, w, generator=g) * 5).to(device=device, dtype=dtype)
    fs, zs = f.clone().requires_grad_(), z.clone().requires_grad_()
    ft, zt = f.clone().requires_grad_(), z.clone().requires_grad_()
    loss, terms = SPEEDLoss()(zs, zt, fs, ft, return_terms=True)
    assert loss.dtype == torch.float32
    assert terms["relation"].abs() < 1e-5 and terms["logit"].abs() < 1e-5
    loss.backward()
    assert ft.grad is None and zt.grad is None
    assert fs.grad is not None and torch.isfinite(fs.grad).all() and torch.isfinite(zs.grad).all()


@given(B=st.integers(1, 2), Ds=st.integers(1, 8), Dt=st.integers(1, 8), h=st.integers(1, 8), w=st.integers(1, 8),
       seed=st.integers(0, 2**31 - 1))
def test_invariant_to_a_consistent_permutation_of_pixels(B, Ds, Dt, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    fs, ft = torch.randn(B, Ds, h, w, generator=g), torch.randn(B, Dt, h, w, generator=g)
    zs, zt = torch.randn(B, 5, h, w, generator=g), torch.randn(B, 5, h, w, generator=g)
    valid = torch.rand(B, h, w, generator=g) < 0.6
    perm = torch.randperm(h * w, generator=g)

    def shuffle(x):
        return x.flatten(-2)[..., perm].reshape(x.shape)

    crit = SPEEDLoss(feature_weight=0.7, logit_weight=1.3, temperature=2.0)
    a = crit(zs, zt, fs, ft, valid)
    b = crit(shuffle(zs), shuffle(zt), shuffle(fs), shuffle(ft), shuffle(valid))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@given(B=st.integers(1, 2), h=st.integers(1, 16), w=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_valid_at_any_resolution_or_as_labels(B, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    fs, ft = torch.randn(B, 6, h, w, generator=g), torch.randn(B, 4, h, w, generator=g)
    zs, zt = torch.randn(B, 3, 2 * h, 2 * w, generator=g), torch.randn(B, 3, 2 * h, 2 * w, generator=g)
    labels = torch.randint(0, 3, (B, 4 * h, 4 * w), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.3] = 255
    crit = SPEEDLoss()
    from_labels = crit(zs, zt, fs, ft, labels)
    from_mask = crit(zs, zt, fs, ft, labels != 255)
    torch.testing.assert_close(from_labels, from_mask)
    pre_resized = (relation_distillation(fs, ft, resize_nearest(labels != 255, (h, w)))
                   + logit_distillation(zs, zt, resize_nearest(labels != 255, (2 * h, 2 * w))))
    torch.testing.assert_close(from_mask, pre_resized)


def test_all_ignored_batch_gives_a_connected_zero_and_edge_cases_stay_finite():
    fs = torch.randn(2, 8, 5, 5, requires_grad=True)
    zs = torch.randn(2, 4, 5, 5, requires_grad=True)
    none = torch.full((2, 5, 5), 255)
    loss = SPEEDLoss()(zs, torch.randn(2, 4, 5, 5), fs, torch.randn(2, 8, 5, 5), none)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(fs.grad, torch.zeros_like(fs)) and torch.equal(zs.grad, torch.zeros_like(zs))
    # huge logits, one-hot and uniform teachers, zero feature vectors
    for teacher in (torch.randn(2, 4, 5, 5) * 1e4, torch.zeros(2, 4, 5, 5),
                    torch.nn.functional.one_hot(torch.randint(0, 4, (2, 5, 5)), 4).permute(0, 3, 1, 2) * 1e4):
        s = (torch.randn(2, 4, 5, 5) * 1e4).requires_grad_()
        f = torch.zeros(2, 8, 5, 5, requires_grad=True)
        out = SPEEDLoss()(s, teacher.float(), f, torch.zeros(2, 8, 5, 5))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all() and torch.isfinite(f.grad).all()


def test_weights_combine_terms_and_switch_inputs_off():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    fs, ft = torch.randn(2, 5, 2, 2, generator=g), torch.randn(2, 7, 2, 2, generator=g)
    total, terms = SPEEDLoss(0.25, 2.0)(zs, zt, fs, ft, return_terms=True)
    torch.testing.assert_close(total, 0.25 * terms["relation"] + 2.0 * terms["logit"])
    torch.testing.assert_close(SPEEDLoss(feature_weight=0)(zs, zt), 1.0 * terms["logit"])
    torch.testing.assert_close(SPEEDLoss(logit_weight=0)(None, None, fs, ft), terms["relation"])


def test_loss_errors_name_the_argument_and_shapes():
    z, f = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    crit = SPEEDLoss()
    with pytest.raises(ValueError, match=r"student_logits and teacher_logits must share \(B, K, h, w\): "
                                         r"got \(2, 3, 4, 4\) and \(2, 4, 4, 4\)"):
        crit(z, torch.randn(2, 4, 4, 4), f, f)
    with pytest.raises(ValueError, match=r"student_features and teacher_features must share \(B, \*, h, w\)"):
        crit(z, z, f, torch.randn(2, 5, 3, 4))
    with pytest.raises(ValueError, match=r"student_features must be 4-D, got shape \(2, 5, 16\)"):
        crit(z, z, f.flatten(2), f)
    with pytest.raises(ValueError, match=r"valid has batch size 3 but the inputs have 2"):
        crit(z, z, f, f, torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must be a bool mask or an integer label map"):
        crit(z, z, f, f, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"feature_weight=1.0 needs student_features and teacher_features \(got None\); "
                                         r"pass both, or use SPEEDLoss\(feature_weight=0\) for the logit term alone"):
        crit(z, z)
    with pytest.raises(ValueError, match=r"logit_weight=1.0 needs student_logits and teacher_logits \(got None\); "
                                         r"pass both, or use SPEEDLoss\(logit_weight=0\) for the relation term alone"):
        crit(None, None, f, f)
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN, \+inf or only -inf at valid pixels \(shape \(2, 3, 4, 4\)\)"):
        crit(z, z * math.inf, f, f)
    with pytest.raises(ValueError, match=r"student_logits contains non-finite values at valid pixels \(shape \(2, 3, 4, 4\)\)"):
        crit(z.clone().fill_(-math.inf), z, f, f)
    with pytest.raises(ValueError, match="feature_weight must be a finite number >= 0"):
        SPEEDLoss(feature_weight=-1)
    with pytest.raises(ValueError, match="both 0"):
        SPEEDLoss(0, 0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        SPEEDLoss(temperature=0)
    with pytest.raises(ValueError, match="method must be one of"):
        relation_distillation(f, f, method="fast")


# --- mixed precision ----------------------------------------------------------------------------

AUTOCAST_CPU = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
@given(B=st.integers(1, 3), Ds=st.integers(1, 48), Dt=st.integers(1, 48), h=st.integers(1, 20), w=st.integers(1, 20),
       K=st.integers(2, 8), input_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       method=st.sampled_from(["gram", "naive"]), seed=st.integers(0, 2**31 - 1))
@example(B=2, Ds=48, Dt=40, h=20, w=20, K=21, input_dtype=torch.bfloat16, method="gram", seed=0)  # UniMatch-like
def test_loss_under_autocast_matches_the_float64_reference(B, Ds, Dt, h, w, K, input_dtype, method, seed, device, amp_dtype):
    """Under autocast (bfloat16 on CPU) both terms and the student gradients are the float32 result.

    The inputs are what an autocast model produces (float32 or bfloat16 tensors); the reference is
    the float64 definition of those exact values. Stated tolerance: 1e-3 relative on both terms,
    with an absolute floor of 2e-6 for the relation term (its Gram terms are each <= 1 after the
    1 / N^2, so float32 leaves ~3e-7 of residue where the loss itself is 0, e.g. N = 1); gradients
    within 1e-3 of the largest entry (1e-2 for bfloat16 inputs, whose gradient is rounded to
    bfloat16) plus 1e-5 absolute (where the exact gradient is 0, e.g. one feature channel, whose
    normalised value is its sign, float32 Gram terms leave ~2e-6). bfloat16 math would be off by
    1e-2 to 1e0.
    """
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, Ds, h, w, generator=g).to(device=device, dtype=input_dtype).requires_grad_()
    ft = torch.randn(B, Dt, h, w, generator=g).to(device=device, dtype=input_dtype)
    zs = (3 * torch.randn(B, K, h, w, generator=g)).to(device=device, dtype=input_dtype).requires_grad_()
    zt = (3 * torch.randn(B, K, h, w, generator=g)).to(device=device, dtype=input_dtype)
    valid = (torch.rand(B, h, w, generator=g) < 0.8).to(device)
    with torch.autocast(device, dtype=amp_dtype):
        rel = relation_distillation(fs, ft, valid, method=method)
        kd = logit_distillation(zs, zt, valid)
    assert rel.dtype == kd.dtype == torch.float32
    (rel + kd).backward()
    assert fs.grad.dtype == zs.grad.dtype == input_dtype  # the gradient has the input's dtype
    fs64, zs64 = fs.detach().double().requires_grad_(), zs.detach().double().requires_grad_()
    rel64, kd64 = naive_relation(fs64, ft, valid), naive_kd(zs64, zt, valid, 1.0, True)
    (rel64 + kd64).backward()
    torch.testing.assert_close(rel.double(), rel64.detach(), rtol=1e-3, atol=2e-6)
    torch.testing.assert_close(kd.double(), kd64.detach(), rtol=1e-3, atol=1e-7)
    tol = 1e-3 if input_dtype == torch.float32 else 1e-2
    # The normalisation's Jacobian is (I - n n^T) / |f|: float32 rounding of the normalised feature
    # reaches the gradient amplified by 1 / |f| (2e-4 at |f| = 7e-5 with one channel, where the
    # exact gradient is 0), so each pixel's feature gradient is also allowed 1e-6 / |f|.
    conditioning = 1e-6 / fs64.detach().norm(dim=1, keepdim=True).clamp_min(1e-30)
    for got, ref, x, floor in ((fs.grad, fs64.grad, fs64, conditioning), (zs.grad, zs64.grad, zs64, 0.0)):
        ref = torch.zeros_like(x) if ref is None else ref  # no valid pixel: the reference is a constant 0
        err = (got.double() - ref).abs()
        assert (err <= tol * ref.abs().max() + 1e-5 + floor).all(), (err.max(), ref.abs().max())


def test_speedloss_backward_inside_autocast_does_not_crash_and_is_float32_math():
    """The reported crash: the Gram backward ran its matmuls in bfloat16 next to float32 operands."""
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 64, 33, 33, generator=g).bfloat16().requires_grad_()
    ft = torch.randn(2, 64, 33, 33, generator=g).bfloat16() + fs.detach()
    zs = torch.randn(2, 5, 33, 33, generator=g).bfloat16().requires_grad_()
    crit = SPEEDLoss()
    with torch.autocast(**AUTOCAST_CPU):
        loss, terms = crit(zs, zs.detach() + 1, fs, ft, return_terms=True)
        loss.backward()  # backward inside the autocast region too
    ref = naive_relation(fs.detach(), ft, torch.ones(2, 33, 33, dtype=torch.bool))
    assert abs(terms["relation"].double() - ref) / ref < 1e-3
    assert fs.grad.dtype == torch.bfloat16 and torch.isfinite(fs.grad.float()).all()


# --- settings reach their terms; invalid pixels never matter; inputs untouched; cost model -----

@given(fw=st.sampled_from([0.0, 0.3, 2.0]), lw=st.sampled_from([0.0, 0.7, 1.5]), T=st.sampled_from([0.5, 1.0, 4.0]),
       weighting=st.booleans(), ignore_index=st.sampled_from([255, -1, 3]), method=st.sampled_from(["gram", "naive"]),
       seed=st.integers(0, 2**31 - 1))
def test_speedloss_is_the_weighted_sum_of_its_functional_terms(fw, lw, T, weighting, ignore_index, method, seed):
    if fw == 0 and lw == 0:
        return
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    fs, ft = torch.randn(2, 4, 3, 4, generator=g), torch.randn(2, 6, 3, 4, generator=g)
    labels = torch.randint(0, 4, (2, 6, 7), generator=g).masked_fill(torch.rand(2, 6, 7, generator=g) < 0.3,
                                                                     ignore_index)
    crit = SPEEDLoss(fw, lw, temperature=T, entropy_weighting=weighting, ignore_index=ignore_index,
                     relation_method=method)
    total, terms = crit(zs, zt, fs, ft, valid=labels, return_terms=True)
    want = torch.zeros(())
    if fw:
        rel = relation_distillation(fs, ft, labels != ignore_index, method=method)
        torch.testing.assert_close(terms["relation"], rel)
        torch.testing.assert_close(rel.double(), naive_relation(fs, ft, resize_nearest(labels != ignore_index, (3, 4))),
                                   rtol=1e-4, atol=1e-6)
        want = want + fw * rel
    if lw:
        kd = logit_distillation(zs, zt, labels != ignore_index, temperature=T, entropy_weighting=weighting)
        torch.testing.assert_close(terms["logit"], kd)
        torch.testing.assert_close(kd.double(), naive_kd(zs, zt, labels != ignore_index, T, weighting),
                                   rtol=1e-4, atol=1e-6)
        want = want + lw * kd
    torch.testing.assert_close(total, want)


@pytest.mark.parametrize("device", DEVICES)
@given(B=st.integers(1, 3), K=st.integers(1, 6), D=st.integers(1, 8), h=st.integers(1, 9), w=st.integers(1, 9),
       junk=st.sampled_from([math.nan, math.inf, -math.inf, 1e30]), method=st.sampled_from(["gram", "naive"]),
       seed=st.integers(0, 2**31 - 1))
def test_ignored_pixels_never_reach_the_loss_or_its_gradients(B, K, D, h, w, junk, method, seed, device):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(B, K, h, w, generator=g).to(device), torch.randn(B, K, h, w, generator=g).to(device)
    fs, ft = torch.randn(B, D, h, w, generator=g).to(device), torch.randn(B, D + 1, h, w, generator=g).to(device)
    valid = (torch.rand(B, h, w, generator=g) < 0.6).to(device)
    crit = SPEEDLoss(0.7, 1.3, relation_method=method)

    def run(corrupt):
        inputs = [t.clone() for t in (zs, zt, fs, ft)]
        if corrupt:
            for t in inputs:
                t.masked_fill_(~valid[:, None], junk)
        inputs[0].requires_grad_()
        inputs[2].requires_grad_()
        loss, terms = crit(*inputs, valid=valid, return_terms=True)
        loss.backward()
        return loss, terms, inputs[0].grad, inputs[2].grad

    clean, dirty = run(False), run(True)
    assert torch.equal(clean[0], dirty[0]) and all(torch.equal(clean[1][k], dirty[1][k]) for k in clean[1])
    assert torch.equal(clean[2], dirty[2]) and torch.equal(clean[3], dirty[3])
    assert (dirty[2][~valid[:, None].expand_as(dirty[2])] == 0).all()


def test_no_loss_input_is_modified():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g),
              torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 2, 5, 5, generator=g),
              torch.randint(0, 3, (2, 5, 5), generator=g).index_fill_(1, torch.tensor([0]), 255)]
    inputs[0].requires_grad_()
    inputs[2].requires_grad_()
    before = [t.detach().clone() for t in inputs]
    for method in ("gram", "naive"):
        SPEEDLoss(temperature=2.0, relation_method=method)(*inputs[:4], valid=inputs[4]).backward()
        logit_distillation(inputs[0], inputs[1], inputs[4] != 255)
        relation_distillation(inputs[2], inputs[3], inputs[4], method=method)
    assert all(torch.equal(a, b) for a, b in zip(inputs, before))


@given(N=st.integers(1, 5000), Ds=st.integers(1, 512), Dt=st.integers(1, 512), volume=st.booleans())
def test_auto_uses_the_cheaper_form(N, Ds, Dt, volume):
    """Gram costs N (Ds^2 + Ds Dt + Dt^2) multiply-adds, naive N^2 (Ds + Dt + 1): auto takes the
    smaller, N counting every pixel of an image or voxel of a volume."""
    import entropymix.loss as L
    calls = []
    original = L._GramRelation.apply
    L._GramRelation.apply = lambda *a: calls.append(1) or original(*a)
    try:
        h = max(1, int(math.isqrt(N)))
        w = max(1, N // h)
        size = (h, w) if not volume else (h, max(1, w // 2), 2)
        relation_distillation(torch.zeros(1, Ds, *size, device="meta"), torch.zeros(1, Dt, *size, device="meta"),
                              check_values=False)
    finally:
        L._GramRelation.apply = original
    n = math.prod(size)
    assert bool(calls) == (Ds * Ds + Ds * Dt + Dt * Dt <= n * (Ds + Dt + 1))


@pytest.mark.parametrize("empty", [[0], [1], [0, 2]])
def test_relation_mean_is_over_images_with_a_valid_pixel(empty):
    """SPEC: the mean runs over images with N_b > 0; an image without valid pixels is not a zero in it."""
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 3, 5, 6, generator=g)
    valid = torch.rand(3, 5, 6, generator=g) < 0.7
    valid[empty] = False
    for method in ("gram", "naive"):
        out = relation_distillation(fs.double(), ft.double(), valid, method=method)
        torch.testing.assert_close(out, naive_relation(fs, ft, valid), rtol=1e-9, atol=1e-12)
        per_image = [naive_relation(fs[b:b + 1], ft[b:b + 1], valid[b:b + 1]) for b in range(3) if b not in empty]
        torch.testing.assert_close(out, torch.stack(per_image).mean(), rtol=1e-9, atol=1e-12)


# --- volumes: (B, D, X, Y, Z) -------------------------------------------------------------------------

volumes = st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(1, 7),
                    st.integers(1, 5))


@pytest.mark.parametrize("device", DEVICES)
@given(shape=volumes, p_valid=st.sampled_from([0.0, 0.4, 1.0]), valid_scale=st.sampled_from([1, 2]),
       T=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 2**31 - 1))
@example(shape=(2, 16, 16, 7, 6, 5), p_valid=0.8, valid_scale=2, T=1.0, seed=0)   # V-Net-like: D = 16
def test_volume_losses_equal_their_definitions_and_spare_the_teacher(shape, p_valid, valid_scale, T, seed, device):
    """Relation term vs the naive N x N form, KD vs its definition, on volumes; the valid mask at
    twice the features' resolution; ignored voxels hold NaN and never reach a value or a gradient."""
    B, Ds, Dt, X, Y, Z = shape
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, Ds, X, Y, Z, generator=g, dtype=torch.float64)
    ft = torch.randn(B, Dt, X, Y, Z, generator=g, dtype=torch.float64)
    s, t = torch.randn(B, 3, X, Y, Z, generator=g, dtype=torch.float64), torch.randn(B, 3, X, Y, Z, generator=g, dtype=torch.float64)
    big = (X * valid_scale, Y * valid_scale, Z * valid_scale)
    valid_big = torch.rand(B, *big, generator=g) < p_valid
    valid = resize_nearest(valid_big, (X, Y, Z))
    for x in (fs, ft, s, t):
        x.masked_fill_(~valid[:, None], math.nan)  # what an ignored voxel holds never matters
    fs, ft, s, t, valid_big, valid = (x.to(device) for x in (fs, ft, s, t, valid_big, valid))
    fs.requires_grad_(), ft.requires_grad_(), s.requires_grad_(), t.requires_grad_()
    clean = lambda x: torch.where(valid[:, None], x, 0.0)  # noqa: E731
    ref = naive_relation(clean(fs), clean(ft), valid)
    for method in ("gram", "naive"):
        torch.testing.assert_close(relation_distillation(fs, ft, valid_big, method=method), ref, rtol=1e-9, atol=1e-12)
    kd = logit_distillation(s, t, valid_big, temperature=T)
    torch.testing.assert_close(kd, naive_kd(clean(s), clean(t), valid, T, True), rtol=1e-9, atol=1e-12)
    loss = SPEEDLoss(temperature=T)(s, t, fs, ft, valid=torch.where(valid_big, 0, 255))
    loss.backward()
    assert torch.isfinite(loss) and ft.grad is None and t.grad is None
    assert torch.isfinite(fs.grad).all() and (fs.grad[~valid[:, None].expand_as(fs)] == 0).all()
    assert torch.isfinite(s.grad).all() and (s.grad[~valid[:, None].expand_as(s)] == 0).all()
    same = SPEEDLoss()(s.detach(), s.detach(), fs.detach(), fs.detach(), valid=valid)
    assert float(same) == pytest.approx(0.0, abs=1e-12)  # zero when student equals teacher


@pytest.mark.parametrize("device, amp_dtype", AUTOCAST)
@given(shape=volumes, seed=st.integers(0, 2**31 - 1))
def test_volume_loss_under_autocast_is_float32_close_to_float64(shape, seed, device, amp_dtype):
    B, Ds, Dt, X, Y, Z = shape
    g = torch.Generator().manual_seed(seed)
    fs, ft = torch.randn(B, Ds, X, Y, Z, generator=g), torch.randn(B, Dt, X, Y, Z, generator=g)
    s, t = torch.randn(B, 4, X, Y, Z, generator=g), torch.randn(B, 4, X, Y, Z, generator=g)
    valid = torch.rand(B, X, Y, Z, generator=g) < 0.7
    ref = SPEEDLoss()(s.double(), t.double(), fs.double(), ft.double(), valid=valid)
    fs = fs.to(device).requires_grad_()
    with torch.autocast(device, dtype=amp_dtype):
        out = SPEEDLoss()(s.to(device), t.to(device), fs, ft.to(device), valid=valid.to(device))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-3, atol=1e-5)
    out.backward()
    assert torch.isfinite(fs.grad).all()


def test_volume_shapes_are_checked_like_images():
    with pytest.raises(ValueError, match=r"student_features and teacher_features must share \(B, \*, x, y, z\)"):
        relation_distillation(torch.rand(1, 4, 2, 3, 4), torch.rand(1, 4, 2, 3, 5))
    with pytest.raises(ValueError, match=r"student_logits must be 4-D, got shape \(1, 2, 3\) \(or 5-D for volumes\)"):
        logit_distillation(torch.rand(1, 2, 3), torch.rand(1, 2, 3))
    with pytest.raises(ValueError, match=r"valid must be 4-D, got shape \(1, 3, 4\)"):
        relation_distillation(torch.rand(1, 4, 2, 3, 4), torch.rand(1, 4, 2, 3, 4), torch.ones(1, 3, 4, dtype=torch.bool))


@settings(max_examples=20)
@given(B=st.integers(1, 2), Ds=st.integers(1, 6), Dt=st.integers(1, 6), K=st.integers(2, 4), h=st.integers(1, 5),
       w=st.integers(1, 5), student_wide=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_float32_and_float64_inputs_meet_in_float64(B, Ds, Dt, K, h, w, student_wide, seed):
    """One side float32 and the other float64 (a teacher kept in double, say): both terms promote
    to float64 and equal the all-float64 loss; the student's gradient keeps the student's dtype."""
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(B, K, h, w, generator=g, dtype=torch.float64), torch.randn(B, K, h, w, generator=g, dtype=torch.float64)
    fs, ft = torch.randn(B, Ds, h, w, generator=g, dtype=torch.float64), torch.randn(B, Dt, h, w, generator=g, dtype=torch.float64)
    student_dtype = torch.float64 if student_wide else torch.float32
    teacher_dtype = torch.float32 if student_wide else torch.float64
    zs_in = zs.to(student_dtype).requires_grad_()
    fs_in = fs.to(student_dtype).requires_grad_()
    zt_in, ft_in = zt.to(teacher_dtype), ft.to(teacher_dtype)
    loss = SPEEDLoss()(zs_in, zt_in, fs_in, ft_in)
    reference = SPEEDLoss()(zs_in.detach().double(), zt_in.double(), fs_in.detach().double(), ft_in.double())
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, reference, rtol=1e-10, atol=1e-12)
    loss.backward()
    assert zs_in.grad.dtype == student_dtype and fs_in.grad.dtype == student_dtype
