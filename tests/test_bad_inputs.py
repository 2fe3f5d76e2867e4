"""The sweep of bad inputs: each is a ValueError / TypeError naming the argument (and the shapes or
devices), or a finite result. The ``meta`` device stands in for a second device."""

import io
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from entropymix import ClassMix, CutMix, EntropyMix, MixPlan, SPEEDLoss
from entropymix import functional as F

B, H, W, K = 2, 8, 8, 4
VIEWS = [torch.rand(B, 3, H, W) for _ in range(2)]
PROBS = [torch.rand(B, K, H, W).softmax(1) for _ in range(2)]
Z, FEAT = torch.randn(B, K, H, W), torch.randn(B, 5, H, W)
META = torch.empty(B, K, H, W, device="meta")


def nan_at(t, where=(0, 0)):
    t = t.clone()
    t[(slice(None), slice(None)) + where] = math.nan
    return t


BAD = [
    ("probs on another device", lambda: EntropyMix(2)(VIEWS, probs=[META, META]), ValueError,
     r"probs\[0\] is on meta but views are on cpu"),
    ("valid on another device", lambda: EntropyMix(2)(VIEWS, probs=PROBS, valid=[torch.ones(B, H, W, dtype=torch.bool,
                                                                                             device="meta"), None]),
     ValueError, r"valid\[0\] is on meta but probs\[0\] is on cpu"),
    ("loss valid on another device", lambda: SPEEDLoss()(Z, Z, FEAT, FEAT, valid=torch.ones(B, H, W, dtype=torch.bool,
                                                                                            device="meta")),
     ValueError, r"valid is on meta but the inputs are on cpu"),
    ("generator=0 (EntropyMix)", lambda: EntropyMix(2, select="sample")(VIEWS, probs=PROBS, generator=0), TypeError,
     r"generator must be a torch.Generator or None, got int 0"),
    ("generator=0 (CutMix)", lambda: CutMix()(VIEWS, generator=0), TypeError, r"generator must be a torch.Generator"),
    ("generator=0 (ClassMix)", lambda: ClassMix()(VIEWS, probs=PROBS, generator=0), TypeError,
     r"generator must be a torch.Generator"),
    ("plan index out of range", lambda: MixPlan(torch.full((B, 2, 2), 2), 2, (H, W)), ValueError,
     r"index values must lie in \[0, 2\) for num_views=2, got min 2 and max 2 in index \(2, 2, 2\)"),
    ("plan index negative", lambda: MixPlan(torch.full((B, 2, 2), -1), 2, (H, W)), ValueError, r"got min -1"),
    ("plan index not int64", lambda: MixPlan(torch.zeros(B, 2, 2, dtype=torch.int32), 2, (H, W)), TypeError,
     r"index must be int64, got torch.int32 \(2, 2, 2\)"),
    ("plan num_views 0", lambda: MixPlan(torch.zeros(B, 2, 2, dtype=torch.long), 0, (H, W)), ValueError,
     r"num_views must be a positive int"),
    ("probs with NaN at a valid pixel", lambda: EntropyMix(2)(VIEWS, probs=[nan_at(PROBS[0]), PROBS[1]]), ValueError,
     r"probs\[0\] contains non-finite values \(shape \(2, 4, 8, 8\)\)"),
    ("negative probabilities summing to 1", lambda: EntropyMix(2)(VIEWS, probs=[PROBS[0], torch.tensor(
        [0.5, 0.6, -0.25, 0.15]).view(1, K, 1, 1).expand(B, K, H, W)]), ValueError, r"probs\[1\] must be probabilities"),
    ("generator=0 (select_views)", lambda: F.select_views(torch.rand(2, B, 2, 2), "sample", generator=0), TypeError,
     r"generator must be a torch.Generator or None, got int 0"),
    ("generator=0 (cutmix_boxes)", lambda: F.cutmix_boxes(B, (H, W), generator=0), TypeError,
     r"generator must be a torch.Generator"),
    ("generator='cpu' (classmix_masks)", lambda: F.classmix_masks(torch.zeros(B, H, W, dtype=torch.long), K,
                                                                  generator="cpu"), TypeError,
     r"generator must be a torch.Generator or None, got str 'cpu'"),
    ("probs with +inf", lambda: F.entropy(PROBS[0].index_fill(1, torch.tensor([0]), math.inf)), ValueError,
     r"probs contains non-finite values"),
    ("logits with NaN", lambda: F.entropy_from_logits(nan_at(Z)), ValueError, r"logits contains NaN or \+inf"),
    ("logits with +inf", lambda: F.entropy_from_logits(Z.index_fill(1, torch.tensor([1]), math.inf)), ValueError,
     r"logits contains NaN or \+inf"),
    ("a pixel of only -inf logits", lambda: EntropyMix(2)(VIEWS, logits=[Z, Z.index_fill(0, torch.tensor([1]),
                                                                                            -math.inf)]),
     ValueError, r"logits\[1\] contains NaN or \+inf, or a pixel whose logits are all -inf"),
    ("student features with inf", lambda: SPEEDLoss()(Z, Z, FEAT.index_fill(1, torch.tensor([0]), math.inf), FEAT),
     ValueError, r"student_features contains non-finite values at valid pixels \(shape \(2, 5, 8, 8\)\)"),
    ("teacher features with NaN", lambda: SPEEDLoss()(Z, Z, FEAT, nan_at(FEAT)), ValueError,
     r"teacher_features contains non-finite values at valid pixels"),
    ("student logits with NaN", lambda: SPEEDLoss()(nan_at(Z), Z, FEAT, FEAT), ValueError,
     r"student_logits contains non-finite values at valid pixels"),
    ("teacher logits with +inf", lambda: SPEEDLoss()(Z, Z.index_fill(1, torch.tensor([0]), math.inf), FEAT, FEAT),
     ValueError, r"teacher_logits contains NaN, \+inf or only -inf at valid pixels"),
    ("float valid for the loss", lambda: SPEEDLoss()(Z, Z, FEAT, FEAT, valid=torch.ones(B, H, W)), TypeError,
     r"valid must be a bool mask or an integer label map"),
    ("classmix labels not int64", lambda: F.classmix_masks(torch.zeros(B, H, W, dtype=torch.int32), K), TypeError,
     r"labels must be int64 class indices, got torch.int32 \(2, 8, 8\)"),
]


@pytest.mark.parametrize("case,call,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_a_clear_error(case, call, error, match):
    with pytest.raises(error, match=match):
        call()


FINITE = [
    ("teacher logits of -inf (a masked class)", lambda: SPEEDLoss()(Z, Z.index_fill(1, torch.tensor([0]), -math.inf),
                                                                    FEAT, FEAT)),
    ("NaN at ignored pixels, loss", lambda: SPEEDLoss()(nan_at(Z), nan_at(Z), nan_at(FEAT), nan_at(FEAT),
                                                        valid=torch.ones(B, H, W, dtype=torch.long).index_put_(
                                                            (torch.arange(B), torch.zeros(B, dtype=torch.long),
                                                             torch.zeros(B, dtype=torch.long)), torch.tensor(255)))),
    ("NaN at ignored pixels, mixer", lambda: EntropyMix(2)(VIEWS, probs=[nan_at(PROBS[0]), PROBS[1]],
                                                           valid=[torch.ones(B, H, W).index_fill(2, torch.tensor([0]),
                                                                                                  255).long(), None])[0]),
    ("all-ignored batch", lambda: SPEEDLoss()(Z, Z, FEAT, FEAT, valid=torch.full((B, H, W), 255))),
    ("huge logits", lambda: SPEEDLoss()(Z * 1e4, -Z * 1e4, FEAT * 1e4, FEAT)),
    ("uniform and one-hot teacher", lambda: SPEEDLoss()(Z, torch.zeros_like(Z), FEAT, FEAT)
     + SPEEDLoss()(Z, Z * 1e6, FEAT, FEAT)),
]


@pytest.mark.parametrize("case,call", FINITE, ids=[f[0] for f in FINITE])
def test_edge_input_gives_a_finite_result(case, call):
    out = call()
    assert torch.isfinite(out).all()


def test_plan_equality_and_torch_load_defaults():
    plan = MixPlan(torch.randint(0, 3, (2, 4, 4)), 3, (9, 9))
    assert plan == MixPlan(plan.index.clone(), 3, (9, 9)) and plan != MixPlan(plan.index, 4, (9, 9))
    assert plan != MixPlan((plan.index + 1) % 3, 3, (9, 9))
    buf = io.BytesIO()
    torch.save({"plan": plan}, buf)
    buf.seek(0)
    assert torch.load(buf)["plan"] == plan  # weights_only=True, the default


@given(entry=st.sampled_from(["EntropyMix", "CutMix", "ClassMix", "select_views", "cutmix_boxes", "classmix_masks"]),
       mode=st.sampled_from(["max", "min", "sample", "random"]), p=st.sampled_from([0.0, 0.5, 1.0]),
       bad=st.sampled_from([0, "seed", 1.5, torch.zeros(1)]))
def test_every_generator_argument_rejects_a_bad_one_whatever_else_is_passed(entry, mode, p, bad):
    """Even on paths that draw no random number (select="max", p=0 or 1)."""
    views = [torch.rand(2, 3, 8, 8) for _ in range(2)]
    probs = [torch.rand(2, 4, 8, 8).softmax(1) for _ in range(2)]
    calls = {
        "EntropyMix": lambda: EntropyMix(2, select=mode, p=p)(views, probs=probs, generator=bad),
        "CutMix": lambda: CutMix(p=p)(views, generator=bad),
        "ClassMix": lambda: ClassMix(p=p)(views, probs=probs, generator=bad),
        "select_views": lambda: F.select_views(torch.rand(2, 2, 2, 2), mode, generator=bad),
        "cutmix_boxes": lambda: F.cutmix_boxes(2, (8, 8), p, generator=bad),
        "classmix_masks": lambda: F.classmix_masks(probs[0].argmax(1), 4, generator=bad),
    }
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        calls[entry]()


def test_empty_batches_give_empty_results(monkeypatch):
    monkeypatch.setattr(F, "_WARNED_PROBS_AS_LOGITS", [False])  # the once-per-process warning is armed
    empty = torch.rand(0, 3, 4, 4).softmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pixel, so nothing looks like probabilities passed as logits
        assert F.entropy(empty).shape == (0, 4, 4) and F.entropy_from_logits(empty).shape == (0, 4, 4)
        mixed, plan = EntropyMix(2)([torch.rand(0, 3, 4, 4)] * 2, logits=[empty, empty])
        assert mixed.shape == (0, 3, 4, 4) and plan.index.shape == (0, 2, 2)
    mixed, plan = EntropyMix(2)([torch.rand(0, 3, 4, 4)] * 2, probs=[empty, empty])
    assert mixed.shape == (0, 3, 4, 4) and plan.index.shape == (0, 2, 2)
    with pytest.raises(ValueError, match=r"probs must have at least one class, got shape \(2, 0, 4, 4\)"):
        F.entropy(torch.rand(2, 0, 4, 4))
