"""EntropyMix, CutMix and the replayable :class:`MixPlan` they return."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import functional as F
from .functional import Grid, _check_tensor, _pair, _shape

__all__ = ["MixPlan", "EntropyMix", "CutMix", "ClassMix"]


@dataclass(frozen=True, eq=False)
class MixPlan:
    """Which view every pixel comes from; replay it on labels, confidences and features.

    Attributes:
        index: int64 source-view map, ``(B, gh, gw)`` for grid plans or ``(B, H, W)`` for pixel
            plans, values in ``[0, num_views)``. Pixel ``(y, x)`` of an ``(h, w)`` map reads view
            ``index[b, floor(y * gh / h), floor(x * gw / w)]``.
        num_views: V, the number of views the plan mixes.
        size: ``(H, W)`` of the images the plan was made for (the default of :meth:`fractions`).
        check: validate the index values at construction (``ValueError`` outside
            ``[0, num_views)``); this reads the index back, so the mixers, whose plans are valid
            by construction, pass ``False``. Dtype and shape are always checked.

    Plain data: picklable and loadable with ``torch.load``'s default ``weights_only=True``,
    ``.to(device)``-able, compared by value (``==``), and applying it twice gives the same
    result (an in-place edit of ``index`` is seen: cached masks are keyed on its version).
    """

    index: Tensor
    num_views: int
    size: Tuple[int, int]
    check: InitVar[bool] = True
    # Pixel masks per resolution, built once so that mixing images, labels, confidences and
    # masks at one size resizes the plan once. Not part of the data: not compared or pickled.
    _masks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self, check: bool) -> None:
        _check_tensor("index", self.index, ndim=(3,))
        if self.index.dtype != torch.int64:
            raise TypeError(f"index must be int64, got {self.index.dtype} {_shape(self.index)}")
        if isinstance(self.num_views, bool) or not isinstance(self.num_views, int) or self.num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {self.num_views!r}")
        object.__setattr__(self, "size", _pair("size", tuple(self.size)))
        if check and self.index.numel() and self.index.device.type != "meta":
            lo, hi = int(self.index.min()), int(self.index.max())
            if lo < 0 or hi >= self.num_views:
                raise ValueError(f"index values must lie in [0, {self.num_views}) for num_views={self.num_views}, "
                                 f"got min {lo} and max {hi} in index {_shape(self.index)}")

    def __reduce__(self):
        # Rebuilt through the constructor: plain pickle and torch.load(weights_only=True) alike.
        return (MixPlan, (self.index, self.num_views, self.size, False))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MixPlan):
            return NotImplemented
        return (self.num_views == other.num_views and self.size == other.size
                and self.index.shape == other.index.shape and self.index.device == other.index.device
                and bool(torch.equal(self.index, other.index)))

    __hash__ = None  # type: ignore[assignment]  # the index is a tensor: compared by value, not hashable

    @property
    def grid(self) -> Tuple[int, int]:
        """``(gh, gw)``: the cells of the plan (``(H, W)`` for a pixel plan)."""
        return tuple(self.index.shape[-2:])  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        return self.index.shape[0]

    def apply(self, tensors: Sequence[Tensor]) -> Tensor:
        """Mix V tensors ``(B, h, w)`` or ``(B, C, h, w)`` of any dtype and resolution by this plan.

        A pure gather (labels stay labels): see :func:`entropymix.functional.apply_plan`.
        """
        size = F._check_plan_inputs(self.index, tensors, self.num_views)
        key = (size, self.index._version)  # an in-place edit of the index bumps its version
        masks = self._masks.get(key)
        if masks is None:
            self._masks.clear()
            masks = self._masks[key] = F._view_masks(self.index, self.num_views, size)
        return F._mix(masks, tensors)

    def source_map(self, size: Optional[Tuple[int, int]] = None) -> Tensor:
        """``(B, h, w)`` int64 view index of every pixel at ``size`` (default: the image size)."""
        return F.source_map(self.index, _pair("size", size if size is not None else self.size))

    def fractions(self, size: Optional[Tuple[int, int]] = None) -> Tensor:
        """``(B, V)`` float32 share of pixels taken from each view at ``size`` (default: the image size).

        CutMix's lambda, generalised: ``fractions()[:, 1]`` is the pasted area of a CutMix plan.
        """
        h, w = _pair("size", size if size is not None else self.size)
        gh, gw = self.grid
        dev = self.index.device
        # Pixels per cell = (rows in cell row) x (cols in cell column); no full-size map needed.
        rows = F._assignment(h, gh, dev).sum(1).double()
        cols = F._assignment(w, gw, dev).sum(1).double()
        weight = (rows[:, None] * cols[None, :]) / (h * w)
        onehot = nn.functional.one_hot(self.index, self.num_views).double()
        return (onehot * weight[None, :, :, None]).sum((1, 2)).float()

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "MixPlan":
        """The same plan with its index on ``device``."""
        return MixPlan(self.index.to(device, non_blocking=non_blocking), self.num_views, self.size, False)


# A saved plan loads with torch.load's default weights_only=True.
torch.serialization.add_safe_globals([MixPlan])


def _check_views(views: Sequence[Tensor], min_views: int = 2, exactly: Optional[str] = None) -> Tuple[int, int, int, int]:
    """``(B, C, H, W)`` of V views sharing shape, dtype and device; ``exactly``: the name of a
    two-view mixer, which takes 2 views and no more."""
    if isinstance(views, Tensor) or not isinstance(views, (list, tuple)):
        raise TypeError(f"views must be a list or tuple of (B, C, H, W) tensors, got {type(views).__name__}")
    if exactly is not None and len(views) != 2:
        raise ValueError(f"{exactly} mixes exactly 2 views, got {len(views)}")
    if len(views) < min_views:
        raise ValueError(f"views needs at least {min_views} tensors to mix, got {len(views)}")
    first = _check_tensor("views[0]", views[0], ndim=(4,))
    for v, x in enumerate(views):
        _check_tensor(f"views[{v}]", x, ndim=(4,))
        if x.shape != first.shape:
            raise ValueError(f"views must share (B, C, H, W): views[0] is {_shape(first)}, views[{v}] is {_shape(x)}")
        if x.dtype != first.dtype or x.device != first.device:
            raise ValueError(f"views must share dtype and device: views[0] is {first.dtype} on {first.device}, "
                             f"views[{v}] is {x.dtype} on {x.device}")
    return tuple(first.shape)  # type: ignore[return-value]


def _mix_flags(plan: Tensor, p: float, generator: Optional[torch.Generator]) -> Tensor:
    """Keep view 0 everywhere in the samples that are not mixed (probability ``1 - p``)."""
    if p >= 1.0:
        return plan
    keep = F._uniform((plan.shape[0],), plan.device, generator) >= p
    return plan.masked_fill(keep.view(-1, *([1] * (plan.dim() - 1))), 0)


class EntropyMix(nn.Module):
    """Compose images from grid patches of several views, chosen by the teacher's entropy.

    From *Self Pseudo Entropy Knowledge Distillation for Semi-Supervised Semantic Segmentation*
    (SPEED, IEEE TCSVT 2024). A drop-in replacement for the CutMix step of UniMatch-style loops:
    every output pixel is, bit for bit, the same pixel of exactly one view, and the returned
    :class:`MixPlan` mixes pseudo-labels, confidences, masks and features the same way.

    Args:
        grid: ``(gh, gw)`` patch grid, or an int for a square grid.
        select: ``"max"`` (most uncertain view per cell, default), ``"min"``, ``"sample"``
            (categorical over views with probabilities ``softmax(E / temperature)``) or
            ``"random"`` (uniform, a grid-CutMix baseline that needs no probabilities).
        p: probability that a sample is mixed at all; an unmixed sample is view 0 everywhere.
        temperature: temperature of ``"sample"``.
        check_values: check probabilities for non-finite values and the simplex (synchronises
            with the device; switch off in synchronisation-free GPU loops).
        ignore_index: the invalid label when ``valid`` holds integer label maps.

    The per-pixel entropy runs through ``torch.compile`` by default (see
    :func:`entropymix.functional.set_compile`); pass the teacher's probabilities at its output
    stride, before upsampling, to make it cheaper still.

    Shapes:
        - views: V >= 2 tensors ``(B, C, H, W)`` of one dtype and device.
        - probs: V tensors ``(B, K, h, w)`` (``(h, w)`` may differ from ``(H, W)``), or ``logits=``.
        - valid: optional V bool masks ``(B, h', w')``, or integer label maps whose
          ``ignore_index`` pixels are invalid (UniMatch's ``ignore_mask``), any resolution;
          entries may be ``None``.
        - output: ``(B, C, H, W)`` mixed tensor and a :class:`MixPlan` with a ``(B, gh, gw)`` index.

    Example:
        >>> mixer = EntropyMix(grid=(4, 4))
        >>> mixed, plan = mixer([x_s1, x_s1_mix], probs=[p_w, p_w_mix])  # doctest: +SKIP
        >>> y_mixed = plan.apply([y_w, y_w_mix])                          # doctest: +SKIP
    """

    def __init__(self, grid: Grid = (4, 4), select: str = "max", p: float = 1.0,
                 temperature: float = 1.0, check_values: bool = True, ignore_index: int = 255) -> None:
        super().__init__()
        self.grid = _pair("grid", grid)
        if select not in F.SELECT_MODES:
            raise ValueError(f"select must be one of {F.SELECT_MODES}, got {select!r}")
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.select, self.p, self.temperature = select, float(p), float(temperature)
        self.check_values, self.ignore_index = bool(check_values), int(ignore_index)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, select={self.select!r}, p={self.p}, temperature={self.temperature}"

    def forward(self, views: Sequence[Tensor], probs: Optional[Sequence[Tensor]] = None, *,
                logits: Optional[Sequence[Tensor]] = None,
                valid: Optional[Sequence[Optional[Tensor]]] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        B, _, H, W = _check_views(views)
        F._check_generator(generator)
        V = len(views)
        gh, gw = self.grid
        if gh > H or gw > W:
            raise ValueError(f"grid {self.grid} is larger than the images (H, W) = {(H, W)}")
        if probs is not None and logits is not None:
            raise ValueError("pass either probs= or logits=, not both")
        if self.select == "random":
            cell_entropy = torch.zeros(V, B, gh, gw, device=views[0].device)
            cell_valid = None
        else:
            maps, name = (probs, "probs") if probs is not None else (logits, "logits")
            if maps is None:
                raise ValueError(f"select={self.select!r} needs probs= or logits= for each of the {V} views")
            cell_entropy, cell_valid = self._cell_entropy(maps, name, valid, B, V, views[0].device)
        index = F.select_views(cell_entropy, self.select, self.temperature, generator, valid=cell_valid)
        plan = MixPlan(_mix_flags(index, self.p, generator), V, (H, W), False)
        return plan.apply(views), plan

    def _cell_entropy(self, maps: Sequence[Tensor], name: str, valid: Optional[Sequence[Optional[Tensor]]],
                      B: int, V: int, device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
        if isinstance(maps, Tensor) or not isinstance(maps, (list, tuple)) or len(maps) != V:
            got = f"a {type(maps).__name__}" if not isinstance(maps, (list, tuple)) else f"{len(maps)} tensors"
            raise ValueError(f"{name} must be a list of {V} tensors (one per view), got {got}")
        if valid is not None and (not isinstance(valid, (list, tuple)) or len(valid) != V):
            raise ValueError(f"valid must be a list of {V} bool masks (or None entries), got {type(valid).__name__}"
                             f"{'' if not isinstance(valid, (list, tuple)) else f' of length {len(valid)}'}")
        first = _check_tensor(f"{name}[0]", maps[0], ndim=(4,), floating=True)
        h, w = first.shape[-2:]
        if first.device != device:
            raise ValueError(f"{name}[0] is on {first.device} but views are on {device}")
        if first.shape[0] != B:
            raise ValueError(f"{name}[0] has batch size {first.shape[0]} but views have {B}: {name}[0] is {_shape(first)}")
        if self.grid[0] > h or self.grid[1] > w:
            raise ValueError(f"grid {self.grid} is larger than {name} maps (h, w) = {(h, w)}")
        checked, masks = [], []
        for v in range(V):
            m = _check_tensor(f"{name}[{v}]", maps[v], ndim=(4,), floating=True)
            if m.shape != first.shape or m.device != first.device:
                raise ValueError(f"{name} must share one shape and device: {name}[0] is {_shape(first)} on "
                                 f"{first.device}, {name}[{v}] is {_shape(m)} on {m.device}")
            mask = None if valid is None else valid[v]
            if mask is not None:
                _check_tensor(f"valid[{v}]", mask, ndim=(3,))
                mask = F._as_mask(f"valid[{v}]", mask, self.ignore_index)
                if mask.shape[0] != B:
                    raise ValueError(f"valid[{v}] must be a (B, h, w) mask or label map with B = {B}, "
                                     f"got {_shape(mask)}")
                if mask.device != m.device:
                    raise ValueError(f"valid[{v}] is on {mask.device} but {name}[{v}] is on {m.device}")
                mask = F.resize_nearest(mask, (h, w))
            checked.append(m)
            masks.append(mask)
        # One read of each map (entropy and value checks together), one synchronisation for all views.
        ents = F._entropies(name, [f"{name}[{v}]" for v in range(V)], checked, masks, self.check_values)
        cells, nonempty = zip(*(F.patch_entropy(ent, self.grid, mask, return_valid=True)
                                for ent, mask in zip(ents, masks)))
        has_valid = any(m is not None for m in masks)
        return torch.stack(cells), (torch.stack(nonempty) if has_valid else None)


class CutMix(nn.Module):
    """UniMatch's CutMix (one random box per sample) with the :class:`EntropyMix` interface.

    Args:
        p: probability that a sample gets a box.
        size_min, size_max: box area as a fraction of the image, drawn uniformly.
        ratio: ``(low, high)`` range of the box aspect ``h / w``, drawn uniformly.

    ``mixer([x, x_mix], probs=..., generator=g)`` returns ``(mixed, plan)``; ``mixed`` is ``x``
    with the box pasted from ``x_mix``, and ``plan`` is a pixel plan (``(B, H, W)`` index) that
    replays the box on labels, confidences and features at any resolution. ``probs``,
    ``logits`` and ``valid`` are accepted and ignored, so the two mixers are interchangeable.
    All boxes are drawn at once on the generator's (or the images') device.
    """

    def __init__(self, p: float = 0.5, size_min: float = 0.02, size_max: float = 0.4,
                 ratio: Tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        super().__init__()
        F.cutmix_boxes(0, (1, 1), p, size_min, size_max, ratio)  # validate the arguments once
        self.p, self.size_min, self.size_max, self.ratio = float(p), float(size_min), float(size_max), tuple(ratio)

    def extra_repr(self) -> str:
        return f"p={self.p}, size_min={self.size_min}, size_max={self.size_max}, ratio={self.ratio}"

    def forward(self, views: Sequence[Tensor], probs: Optional[Sequence[Tensor]] = None, *,
                logits: Optional[Sequence[Tensor]] = None,
                valid: Optional[Sequence[Optional[Tensor]]] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        B, _, H, W = _check_views(views, exactly="CutMix")
        index = F.cutmix_boxes(B, (H, W), self.p, self.size_min, self.size_max, self.ratio,
                               generator=generator, device=views[0].device)
        plan = MixPlan(index, 2, (H, W), False)
        return plan.apply(views), plan


class ClassMix(nn.Module):
    """ClassMix / DACS with the :class:`EntropyMix` interface: paste half of the predicted classes.

    From *ClassMix: Segmentation-Based Data Augmentation for Semi-Supervised Learning* (Olsson et
    al., WACV 2021) and DACS (Tranheden et al., WACV 2021). For every sample, ``ceil(n / 2)`` of
    the ``n`` classes the teacher predicts in the second view are drawn, and their pixels are
    pasted onto the first view; the returned pixel plan replays that on pseudo-labels,
    confidences, ignore masks and features like any other plan.

    Args:
        p: probability that a sample is mixed at all.
        ignore_index: the invalid label when ``valid`` holds integer label maps.

    ``mixer([x, x_mix], probs=[p, p_mix], valid=[v, v_mix], generator=g)`` (or ``logits=``):
    ``probs[1]`` gives the classes (its argmax, at its own resolution: the plan is ``(B, h, w)``
    and the grid rule carries it to any size); ``valid[1]`` pixels that are invalid are never
    pasted. ``probs[0]`` and ``valid[0]`` are accepted and not used.

    Shapes:
        - views: 2 tensors ``(B, C, H, W)``; probs / logits: 2 tensors ``(B, K, h, w)``.
        - output: ``(B, C, H, W)`` and a :class:`MixPlan` with a ``(B, h, w)`` index.
    """

    def __init__(self, p: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p, self.ignore_index = float(p), int(ignore_index)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, views: Sequence[Tensor], probs: Optional[Sequence[Tensor]] = None, *,
                logits: Optional[Sequence[Tensor]] = None,
                valid: Optional[Sequence[Optional[Tensor]]] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        B, _, H, W = _check_views(views, exactly="ClassMix")
        if (probs is None) == (logits is None):
            raise ValueError("ClassMix needs the teacher's predictions: pass exactly one of probs= or logits=")
        maps, name = (probs, "probs") if probs is not None else (logits, "logits")
        if isinstance(maps, Tensor) or not isinstance(maps, (list, tuple)) or len(maps) != 2:
            raise ValueError(f"{name} must be a list of 2 tensors (one per view), got {type(maps).__name__}")
        pred = _check_tensor(f"{name}[1]", maps[1], ndim=(4,), floating=True)
        if pred.shape[0] != B or pred.device != views[0].device:
            raise ValueError(f"{name}[1] must be (B, K, h, w) with B = {B} on {views[0].device}, "
                             f"got {_shape(pred)} on {pred.device}")
        mask = None
        if valid is not None:
            if not isinstance(valid, (list, tuple)) or len(valid) != 2:
                raise ValueError(f"valid must be a list of 2 masks (or None entries), got {type(valid).__name__}")
            if valid[1] is not None:
                mask = F._as_mask("valid[1]", _check_tensor("valid[1]", valid[1], ndim=(3,)), self.ignore_index)
                if mask.shape[0] != B or mask.device != pred.device:
                    raise ValueError(f"valid[1] must be (B, h, w) with B = {B} on {pred.device}, "
                                     f"got {_shape(mask)} on {mask.device}")
                mask = F.resize_nearest(mask, tuple(pred.shape[-2:]))
        index = F.classmix_masks(pred.argmax(1), pred.shape[1], mask, generator=generator)
        plan = MixPlan(_mix_flags(index, self.p, generator), 2, (H, W), False)
        return plan.apply(views), plan
