"""SPEEDLoss: self-distillation by pixel relations (features) and entropy-weighted KL (logits).

The "teacher" is the same model on the weak view, detached: no extra heads, no pre-trained
teacher. Both terms take a validity mask at any resolution (or a label map with
``ignore_index``), reduce in float32 whatever the input dtype, and give a zero that is still
connected to the graph when no pixel is valid.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _validation as validate
from .functional import _float32_math, resize_nearest

__all__ = ["SPEEDLoss", "relation_distillation", "logit_distillation", "RELATION_METHODS"]

RELATION_METHODS = ("auto", "gram", "naive")


def _valid_mask(valid: Optional[Tensor], batch: int, size: Sequence[int], ignore_index: int,
                device: torch.device) -> Tensor:
    """Bool ``(B, *size)`` mask from a bool mask or an integer label map at any resolution."""
    if valid is None:
        return torch.ones(batch, *size, dtype=torch.bool, device=device)
    return resize_nearest(validate.mask("valid", valid, batch, device, ignore_index, ndim=(len(size) + 1,)), size)


def _check_pair(name: str, student: Tensor, teacher: Tensor, same_channels: bool) -> None:
    validate.tensor(f"student_{name}", student, ndim=(4, 5), floating=True, volumes=True)
    validate.tensor(f"teacher_{name}", teacher, ndim=(4, 5), floating=True, volumes=True)
    s, t = student.shape, teacher.shape
    if (s if same_channels else (s[0], *s[2:])) != (t if same_channels else (t[0], *t[2:])):
        axes = "h, w" if student.dim() == 4 else "x, y, z"
        want = f"(B, K, {axes})" if same_channels else f"(B, *, {axes})"
        raise ValueError(f"student_{name} and teacher_{name} must share {want}: "
                         f"got {validate.shape(student)} and {validate.shape(teacher)}")
    validate.same_device(f"student_{name}", student, teacher.device, f"teacher_{name} is")


def _wide(t: Tensor, other: Optional[Tensor] = None) -> Tensor:
    """At least float32 (float64 stays float64, so gradcheck and references can run exactly), and
    at least ``other``'s dtype: float32 student and float64 teacher inputs meet in float64."""
    dtype = torch.promote_types(t.dtype, torch.float32)
    return t.to(dtype if other is None else torch.promote_types(dtype, other.dtype))


def _check_finite(name: str, t: Tensor, mask: Tensor, allow_neg_inf: bool = False) -> None:
    """Raise unless every valid pixel of ``t`` (``(B, C, h, w)``, ``mask`` ``(B, h, w)``) is finite.

    With ``allow_neg_inf`` (teacher logits masking a class) ``-inf`` is fine as long as one
    class per pixel is finite. Invalid pixels may hold anything: they are never read.
    """
    if allow_neg_inf:
        ok = torch.isfinite(t.amax(1))  # amax propagates NaN; +inf or a row of -inf is not finite
    else:
        ok = torch.isfinite(t).all(1)
    if bool((~ok & mask).any()):
        what = "NaN, +inf or only -inf" if allow_neg_inf else "non-finite values"
        raise ValueError(f"{name} contains {what} at valid pixels (shape {validate.shape(t)})")


def logit_distillation(student_logits: Tensor, teacher_logits: Tensor, valid: Optional[Tensor] = None, *,
                       temperature: float = 1.0, entropy_weighting: bool = True, ignore_index: int = 255,
                       check_values: bool = True) -> Tensor:
    """Entropy-weighted, temperature-scaled KL from the (detached) teacher to the student.

    Per valid pixel ``i``: ``w_i * T^2 * KL(softmax(t_i / T) || softmax(s_i / T))`` with
    ``w_i = 1 - H(softmax(t_i)) / log K`` (confident teacher pixels count more) when
    ``entropy_weighting``, else 1. Summed over valid pixels, divided by their number.

    Args:
        student_logits, teacher_logits: ``(B, K, h, w)`` logits; the teacher is detached here.
        valid: optional bool ``(B, h', w')`` mask, or an integer label map whose
            ``ignore_index`` pixels are ignored; any resolution (nearest, by the grid rule).
        temperature: ``T > 0``.
        check_values: raise ``ValueError`` on non-finite logits (synchronises).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs); 0, still connected to the graph, when no
        pixel is valid.

    >>> t = torch.tensor([10.0, 0.0]).view(1, 2, 1, 1)       # a confident teacher pixel
    >>> round(float(logit_distillation(torch.zeros(1, 2, 1, 1), t)), 4)
    0.6921
    """
    _check_pair("logits", student_logits, teacher_logits, same_channels=True)
    validate.positive("temperature", temperature)
    B, K, *S = student_logits.shape
    mask = _valid_mask(valid, B, S, ignore_index, student_logits.device)
    if check_values:
        _check_finite("student_logits", student_logits, mask)
        _check_finite("teacher_logits", teacher_logits, mask, allow_neg_inf=True)
    with _float32_math(student_logits.device):
        return _logit_kd(student_logits, teacher_logits, None if valid is None else mask, temperature,
                         entropy_weighting)


def _logit_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor], temperature: float,
              entropy_weighting: bool) -> Tensor:
    K = student_logits.shape[1]
    s = _wide(student_logits, teacher_logits)
    t = _wide(teacher_logits.detach(), student_logits)
    if mask is not None:  # whatever an ignored pixel holds (NaN included) never reaches a value or a gradient
        s = torch.where(mask[:, None], s, 0.0)
        t = torch.where(mask[:, None], t, 0.0)
    # A teacher logit of -inf (a masked class) has q = 0: clamping log q keeps q log q = 0, not NaN.
    log_q = torch.log_softmax(t / temperature if temperature != 1 else t, dim=1).clamp_min_(torch.finfo(t.dtype).min)
    log_p = torch.log_softmax(s / temperature if temperature != 1 else s, dim=1)
    q = log_q.exp()
    # KL = sum q log q - sum q log p: two fused reductions, and sum q log q is -H(teacher) at T = 1.
    q_log_q = (q * log_q).sum(1)                                           # (B, h, w)
    kl = (q_log_q - (q * log_p).sum(1)) * temperature ** 2
    if entropy_weighting and K > 1:
        if temperature != 1:
            log_t = torch.log_softmax(t, dim=1).clamp_min_(torch.finfo(t.dtype).min)
            q_log_q = (log_t.exp() * log_t).sum(1)
        kl = kl * (1 + q_log_q / math.log(K)).clamp(0, 1)
    if mask is None:
        return kl.mean()
    # where, not multiply: an ignored pixel contributes an exact zero and no gradient.
    total = torch.where(mask, kl, 0.0).sum()
    return total / mask.sum().clamp_min(1)


def _normalised_rows(features: Tensor, mask: Tensor, other: Tensor) -> Tensor:
    """``(B, N, D)`` unit feature vectors (float32 at least, and at least ``other``'s dtype), zero
    rows at invalid pixels.

    Invalid pixels are zeroed before anything else (``where``, not a product), so whatever they
    hold, NaN included, reaches neither the loss nor a gradient; a zero row normalises to zero.
    """
    f = torch.where(mask[:, None], _wide(features, other), 0.0).flatten(2).transpose(1, 2)   # (B, N, D)
    return nn.functional.normalize(f, dim=2)


class _GramRelation(torch.autograd.Function):
    """``||F_s F_s^T - F_t F_t^T||_F^2`` per image through ``D x D`` Gram matrices.

    Autograd would differentiate both operands of ``F_s^T F_s`` (two GEMMs) and ``F_s^T F_t``
    (a third); the gradient ``4 (F_s G_ss - F_t G_st^T)`` takes two, and nothing flows to the
    teacher.
    """

    @staticmethod
    def forward(ctx, fs: Tensor, ft: Tensor) -> Tensor:                    # (B, N, Ds), (B, N, Dt)
        g_ss, g_st, g_tt = fs.mT @ fs, fs.mT @ ft, ft.mT @ ft
        ctx.save_for_backward(fs, ft, g_ss, g_st)
        return g_ss.square().sum((1, 2)) - 2 * g_st.square().sum((1, 2)) + g_tt.square().sum((1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        fs, ft, g_ss, g_st = ctx.saved_tensors
        with _float32_math(fs.device):  # backward may run inside the caller's autocast region
            grad_fs = torch.baddbmm(fs @ g_ss, ft, g_st.mT, alpha=-1)
            return grad_fs * (4 * grad.to(fs.dtype))[:, None, None], None


def _relation_cost(n: int, d_s: int, d_t: int) -> Tuple[int, int]:
    gram = n * (d_s * d_s + d_s * d_t + d_t * d_t)
    naive = n * n * (d_s + d_t + 1)
    return gram, naive


def relation_distillation(student_features: Tensor, teacher_features: Tensor, valid: Optional[Tensor] = None, *,
                          ignore_index: int = 255, method: str = "auto", check_values: bool = True) -> Tensor:
    """Pixel-relation distillation: match the student's cosine affinities to the teacher's.

    Per image ``b`` with ``N_b`` valid pixels, ``F_s`` / ``F_t`` the L2-normalised features at
    those pixels and ``A = F F^T``: ``||A_s - A_t||_F^2 / N_b^2``, averaged over images with
    ``N_b > 0``. ``D_s`` and ``D_t`` may differ (no projection head).

    The ``N x N`` affinities are never built when that is the costlier form: with
    ``G_xy = F_x^T F_y``, ``||A_s - A_t||^2 = ||G_ss||^2 - 2 ||G_st||^2 + ||G_tt||^2`` exactly, in
    ``O(N D^2)`` time and ``O(D^2)`` memory instead of ``O(N^2 D)`` and ``O(N^2)``.

    Args:
        student_features: ``(B, D_s, h, w)``.
        teacher_features: ``(B, D_t, h, w)``; detached here.
        valid: optional bool mask or integer label map (``ignore_index``), any resolution.
        method: ``"auto"`` (the cheaper form), ``"gram"`` or ``"naive"`` (the ``N x N`` form).
        check_values: raise ``ValueError`` on non-finite features (synchronises).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs); 0, still connected to the graph, when no
        pixel is valid.

    >>> fs, ft = torch.randn(2, 64, 16, 16), torch.randn(2, 32, 16, 16)   # D_s != D_t
    >>> exact, naive = (relation_distillation(fs, ft, method=m) for m in ("gram", "naive"))
    >>> torch.allclose(exact, naive, rtol=1e-4)
    True
    """
    _check_pair("features", student_features, teacher_features, same_channels=False)
    validate.choice("method", method, RELATION_METHODS)
    B, d_s, *S = student_features.shape
    d_t = teacher_features.shape[1]
    mask = _valid_mask(valid, B, S, ignore_index, student_features.device)
    if check_values:
        _check_finite("student_features", student_features, mask)
        _check_finite("teacher_features", teacher_features, mask)
    if method == "auto":
        gram_cost, naive_cost = _relation_cost(math.prod(S), d_s, d_t)
        method = "gram" if gram_cost <= naive_cost else "naive"
    # float32 matmuls even under autocast: the Gram identity cancels catastrophically in bfloat16.
    with _float32_math(student_features.device):
        fs = _normalised_rows(student_features, mask, teacher_features)
        ft = _normalised_rows(teacher_features.detach(), mask, student_features)
        if method == "gram":
            sq = _GramRelation.apply(fs, ft)
        else:
            sq = (fs @ fs.transpose(1, 2) - ft @ ft.transpose(1, 2)).square().sum((1, 2))
        n = mask.flatten(1).sum(1)
        per_image = sq / n.clamp_min(1).to(sq.dtype).square()
        has = n > 0
        return torch.where(has, per_image, 0.0).sum() / has.sum().clamp_min(1)


class SPEEDLoss(nn.Module):
    """Self-distillation loss of SPEED: ``feature_weight * L_rel + logit_weight * L_kd``.

    From *Self Pseudo Entropy Knowledge Distillation for Semi-Supervised Semantic Segmentation*
    (SPEED, IEEE TCSVT 2024). The teacher is the model itself on the weak view: pass its logits
    and features (mixed with the same :class:`~entropymix.MixPlan` as the student's input); they
    are detached inside. See :func:`relation_distillation` and :func:`logit_distillation`.

    Args:
        feature_weight: weight of the pixel-relation term (0 switches it off; features may then be None).
        logit_weight: weight of the entropy-weighted KL term (0 switches it off; logits may then be None).
        temperature: KL temperature ``T``.
        entropy_weighting: weight each pixel's KL by ``1 - H(teacher) / log K``.
        ignore_index: label value ignored when ``valid`` is a label map.
        relation_method: ``"auto"``, ``"gram"`` or ``"naive"``.
        check_values: raise on non-finite inputs (synchronises; switch off in tight GPU loops).

    Shapes:
        - student_logits, teacher_logits: ``(B, K, h, w)``.
        - student_features: ``(B, D_s, h', w')``, teacher_features: ``(B, D_t, h', w')``.
        - valid: bool ``(B, h'', w'')`` or an integer label map, any resolution.
        - output: scalar float32.

    Example (the student distils from itself: zero when student and teacher agree):
        >>> crit = SPEEDLoss()
        >>> logits, feats = torch.randn(2, 5, 8, 8), torch.randn(2, 16, 8, 8)
        >>> float(crit(logits, logits, feats, feats))
        0.0
        >>> loss, terms = crit(torch.randn(2, 5, 8, 8), logits, torch.randn(2, 16, 8, 8), feats,
        ...                    valid=torch.randint(0, 2, (2, 8, 8)) * 255, return_terms=True)
        >>> sorted(terms), bool(loss > 0)
        (['logit', 'relation'], True)
    """

    def __init__(self, feature_weight: float = 1.0, logit_weight: float = 1.0, temperature: float = 1.0,
                 entropy_weighting: bool = True, ignore_index: int = 255, relation_method: str = "auto",
                 check_values: bool = True) -> None:
        super().__init__()
        self.feature_weight = validate.non_negative("feature_weight", feature_weight)
        self.logit_weight = validate.non_negative("logit_weight", logit_weight)
        if self.feature_weight == 0 and self.logit_weight == 0:
            raise ValueError("feature_weight and logit_weight are both 0: the loss would be empty")
        self.temperature = validate.positive("temperature", temperature)
        self.relation_method = validate.choice("relation_method", relation_method, RELATION_METHODS)
        self.entropy_weighting, self.ignore_index = bool(entropy_weighting), int(ignore_index)
        self.check_values = bool(check_values)

    def extra_repr(self) -> str:
        return (f"feature_weight={self.feature_weight}, logit_weight={self.logit_weight}, "
                f"temperature={self.temperature}, entropy_weighting={self.entropy_weighting}, "
                f"ignore_index={self.ignore_index}")

    def forward(self, student_logits: Optional[Tensor], teacher_logits: Optional[Tensor],
                student_features: Optional[Tensor] = None, teacher_features: Optional[Tensor] = None,
                valid: Optional[Tensor] = None, *,
                return_terms: bool = False) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """``feature_weight * L_rel + logit_weight * L_kd``; call the module (``crit(...)``), not this.

        Args:
            student_logits: ``(B, K, h, w)`` (or ``(B, K, x, y, z)``) logits of the student on the
                mixed (strong) view; ``None`` when ``logit_weight=0``.
            teacher_logits: the same shape, the model on the weak views mixed by the same plan;
                detached here.
            student_features: ``(B, D_s, h', w')`` decoder features of the student; ``None`` when
                ``feature_weight=0``.
            teacher_features: ``(B, D_t, h', w')``, mixed by the same plan; detached here. ``D_t``
                may differ from ``D_s``.
            valid: optional bool mask ``(B, h'', w'')`` or an integer label map (``ignore_index``
                pixels are left out), at any resolution.
            return_terms: also return ``{"relation": L_rel, "logit": L_kd}`` (the terms in use).

        Returns:
            The scalar loss (float32; float64 for float64 inputs), and the terms with
            ``return_terms``.
        """
        terms: Dict[str, Tensor] = {}
        total: Optional[Tensor] = None
        if self.feature_weight > 0:
            if student_features is None or teacher_features is None:
                raise ValueError(f"feature_weight={self.feature_weight} needs student_features and teacher_features "
                                 "(got None); pass both, or use SPEEDLoss(feature_weight=0) for the logit term alone")
            terms["relation"] = relation_distillation(
                student_features, teacher_features, valid, ignore_index=self.ignore_index,
                method=self.relation_method, check_values=self.check_values)
            total = self.feature_weight * terms["relation"]
        if self.logit_weight > 0:
            if student_logits is None or teacher_logits is None:
                raise ValueError(f"logit_weight={self.logit_weight} needs student_logits and teacher_logits "
                                 "(got None); pass both, or use SPEEDLoss(logit_weight=0) for the relation term alone")
            terms["logit"] = logit_distillation(
                student_logits, teacher_logits, valid, temperature=self.temperature,
                entropy_weighting=self.entropy_weighting, ignore_index=self.ignore_index,
                check_values=self.check_values)
            kd = self.logit_weight * terms["logit"]
            total = kd if total is None else total + kd
        assert total is not None
        return (total, terms) if return_terms else total

    def __call__(self, student_logits: Optional[Tensor], teacher_logits: Optional[Tensor],
                 student_features: Optional[Tensor] = None, teacher_features: Optional[Tensor] = None,
                 valid: Optional[Tensor] = None, *,
                 return_terms: bool = False) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """``crit(student_logits, teacher_logits, student_features=None, teacher_features=None,
        valid=None, *, return_terms=False)``: see :meth:`forward` (hooks run as for any ``nn.Module``)."""
        return super().__call__(student_logits, teacher_logits, student_features, teacher_features, valid,
                                return_terms=return_terms)
