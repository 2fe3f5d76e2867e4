"""EntropyMix, CutMix and the replayable :class:`MixPlan` they return."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _validation as validate
from . import functional as F
from ._validation import Grid

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
        validate.tensor("index", self.index, ndim=(3, 4), volumes=True)
        if self.index.dtype != torch.int64:
            raise TypeError(f"index must be int64, got {self.index.dtype} {validate.shape(self.index)}")
        if isinstance(self.num_views, bool) or not isinstance(self.num_views, int) or self.num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {self.num_views!r}")
        object.__setattr__(self, "size", validate.dims("size", tuple(self.size), self.index.dim() - 1))
        if check and self.index.numel() and self.index.device.type != "meta":
            lo, hi = int(self.index.min()), int(self.index.max())
            if lo < 0 or hi >= self.num_views:
                raise ValueError(f"index values must lie in [0, {self.num_views}) for num_views={self.num_views}, "
                                 f"got min {lo} and max {hi} in index {validate.shape(self.index)}")

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
    def grid(self) -> Tuple[int, ...]:
        """``(gh, gw)`` (``(g1, g2, g3)`` for volumes): the cells of the plan (the image size for a
        pixel plan)."""
        return tuple(self.index.shape[1:])

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

    def source_map(self, size: Optional[Sequence[int]] = None) -> Tensor:
        """``(B, *size)`` int64 view index of every pixel (voxel) at ``size`` (default: the image size)."""
        return F.source_map(self.index, size if size is not None else self.size)

    def fractions(self, size: Optional[Sequence[int]] = None) -> Tensor:
        """``(B, V)`` float32 share of pixels taken from each view at ``size`` (default: the image size).

        CutMix's lambda, generalised: ``fractions()[:, 1]`` is the pasted area of a CutMix plan.
        """
        size = validate.dims("size", tuple(size) if size is not None else self.size, self.index.dim() - 1)
        dev = self.index.device
        # Pixels per cell = the product of the cell's extent on every axis; no full-size map needed.
        extents = [F._assignment(n, g, dev).sum(1).double() for n, g in zip(size, self.grid)]
        weight = F._outer(extents) / math.prod(size)
        onehot = nn.functional.one_hot(self.index, self.num_views).double()
        return (onehot * weight[None, ..., None]).sum(tuple(range(1, len(size) + 1))).float()

    def summary(self) -> Dict[str, Tensor]:
        """What the mixer did, in two figures (float32 tensors on the plan's device; no sync):

        - ``"share"``: ``(V,)`` mean share of the pixels taken from each view;
        - ``"whole"``: share of the samples taken whole from one view (not mixed at all). A
          mixer degenerating into "no mix" shows here: for example when the teachers of the
          views ran in different modes (train vs eval), so that their entropies are not
          comparable and one view wins every cell.

        >>> plan = MixPlan(torch.tensor([[[0, 1]], [[1, 1]]]), 2, (4, 4))
        >>> plan.summary()
        {'share': tensor([0.2500, 0.7500]), 'whole': tensor(0.5000)}
        """
        cells = self.index.flatten(1)
        whole = (cells == cells[:, :1]).all(1)
        return {"share": self.fractions().mean(0), "whole": whole.float().mean()}

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "MixPlan":
        """The same plan with its index on ``device``."""
        return MixPlan(self.index.to(device, non_blocking=non_blocking), self.num_views, self.size, False)


# A saved plan loads with torch.load's default weights_only=True.
torch.serialization.add_safe_globals([MixPlan])




def _keep_unmixed(index: Tensor, p: float, generator: Optional[torch.Generator]) -> Tensor:
    """View 0 everywhere in the samples that are not mixed (probability ``1 - p``)."""
    if p >= 1.0:
        return index
    keep = F._uniform((index.shape[0],), index.device, generator) >= p
    return index.masked_fill(keep.view(-1, *([1] * (index.dim() - 1))), 0)


class _Mixer(nn.Module):
    """The call every mixer shares, as torchvision's ``_BaseMixUpCutMix`` does for its two.

    ``mixer(views, probs=None, *, logits=None, valid=None, generator=None) -> (mixed, plan)``:
    the views are checked, the teacher's predictions picked (``probs=`` or ``logits=``, not
    both), the subclass's :meth:`_index` makes the plan, samples are left unmixed with
    probability ``1 - p``, and the plan mixes the views.
    """

    two_views = False        # CutMix and ClassMix take exactly 2 views
    draws_p = False          # CutMix draws p with its boxes (UniMatch's statistics), in _index
    repr_fields: Tuple[str, ...] = ("p",)

    def __init__(self, p: float, ignore_index: int = 255) -> None:
        super().__init__()
        self.p = validate.probability("p", p)
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.repr_fields)

    def needs_predictions(self) -> Optional[str]:
        """Who needs ``probs=`` / ``logits=`` (named in the error when neither is given), or None."""
        return None

    def forward(self, views: Sequence[Tensor], probs: Optional[Sequence[Tensor]] = None, *,
                logits: Optional[Sequence[Tensor]] = None,
                valid: Optional[Sequence[Optional[Tensor]]] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        """Mix ``views`` and return ``(mixed, plan)``; call the module (``mixer(views, ...)``), not this.

        Args:
            views: V tensors ``(B, C, H, W)`` (or volumes ``(B, C, X, Y, Z)``) of one shape, dtype
                and device; view 0 is the image mixed into (an unmixed sample is view 0).
            probs: V teacher probability maps ``(B, K, h, w)``, any resolution (the grid rule
                places them); or pass ``logits=`` instead. Mixers that ignore predictions accept
                and ignore them.
            logits: V teacher logit maps, instead of ``probs``.
            valid: V optional masks ``(B, h', w')``: bool, or integer label maps whose
                ``ignore_index`` pixels are invalid; entries may be ``None``.
            generator: the random source of every draw (``torch.Generator``), for replayable plans.

        Returns:
            ``mixed``, shaped like ``views[0]``, every pixel (voxel) the same pixel of one view, and
            the :class:`MixPlan` that replays the mix on labels, confidences, masks and features
            (``plan.apply([...])``).
        """
        plan = self._plan(views, probs, logits, valid, generator)
        return plan.apply(views), plan

    def __call__(self, views: Sequence[Tensor], probs: Optional[Sequence[Tensor]] = None, *,
                 logits: Optional[Sequence[Tensor]] = None,
                 valid: Optional[Sequence[Optional[Tensor]]] = None,
                 generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        """``mixer(views, probs=None, *, logits=None, valid=None, generator=None) -> (mixed, plan)``:
        see :meth:`forward` (hooks run as for any ``nn.Module``)."""
        return super().__call__(views, probs, logits=logits, valid=valid, generator=generator)

    def within_batch(self, x: Tensor, probs: Optional[Tensor] = None, *, logits: Optional[Tensor] = None,
                     valid: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> Tuple[Tensor, MixPlan]:
        """Mix a batch with itself (UniMatch V2's in-batch CutMix), never into duplicate samples.

        Sample ``b`` is mixed with sample ``b - 1`` (sample 0 with the last): the views are
        :func:`~entropymix.functional.pair_within_batch` of ``x`` (and of ``probs`` / ``logits`` /
        ``valid``), and the plan replays with ``plan.apply(pair_within_batch(t))``. Pairing a
        batch with its own flip, ``[x, x.flip(0)]``, instead mixes samples ``b`` and ``B-1-b`` from
        the same two images: a symmetric selection (``"max"``, ``"min"``) then makes both mixed
        samples identical, and the middle sample of an odd batch is mixed with itself.

        Here no sample is paired with itself, and no two mixed samples are equal whenever the B
        images differ at every pixel, whatever the selection: at ``B = 2`` the second sample takes
        the first one's plan, so the two are complementary (each cell shows one image in one sample
        and the other image in the other, as in bidirectional copy-paste); at ``B >= 3`` a sample the
        selection would take whole from its partner keeps its own first cell (pixel, for a pixel
        plan), which is enough since no two samples are each other's partner. At ``B = 1`` the
        sample is returned unmixed.

        Shapes:
            - x: ``(B, C, H, W)``; probs / logits: ``(B, K, h, w)``; valid: ``(B, h', w')``;
              volumes add a depth axis to each (``(B, C, D, H, W)``, ...).
            - output: the shape of ``x`` and a 2-view :class:`MixPlan`.

        Example:
            >>> x, lg = torch.rand(4, 3, 32, 32), torch.randn(4, 21, 32, 32)
            >>> mixed, plan = EntropyMix(grid=4).within_batch(x, logits=lg)
            >>> torch.equal(mixed, plan.apply(F.pair_within_batch(x)))
            True
            >>> any(torch.equal(mixed[a], mixed[b]) for a in range(4) for b in range(a))
            False
        """
        x = validate.tensor("x", x, ndim=(4, 5), volumes=True)
        views = F.pair_within_batch(x)
        maps, kind = validate.pick_maps(probs, logits, self.needs_predictions())
        maps = None if maps is None else [validate.tensor(kind, maps)]
        valid = None if valid is None else [validate.tensor("valid", valid)]
        # The partner's maps and masks are the batch's, rolled: passed once, the mixer rolls what it
        # derives from them (EntropyMix: the cell entropies, not the maps).
        index = self._index(views, maps, kind, valid, generator, partner=True)
        index = index if self.draws_p else _keep_unmixed(index, self.p, generator)
        plan = MixPlan(F.distinct_within_batch(index), 2, tuple(x.shape[2:]), False)
        return plan.apply(views), plan

    def _plan(self, views, probs, logits, valid, generator) -> MixPlan:
        B, _, *S = validate.views(views, exactly=type(self).__name__ if self.two_views else None)
        maps, kind = validate.pick_maps(probs, logits, self.needs_predictions())  # generator: checked where drawn
        index = self._index(views, maps, kind, valid, generator)
        return MixPlan(_keep_unmixed(index, self.p, generator), len(views), tuple(S), False)

    def _index(self, views: Sequence[Tensor], maps: Optional[Sequence[Tensor]], kind: str,
               valid: Optional[Sequence[Optional[Tensor]]], generator: Optional[torch.Generator],
               partner: bool = False) -> Tensor:
        """The plan's index. ``partner`` (``within_batch``): ``maps`` and ``valid`` hold the first
        view's only; the second view's are those rolled by one sample (:func:`pair_within_batch`)."""
        raise NotImplementedError

    @staticmethod
    def _paired(seq: Optional[Sequence[Tensor]], partner: bool) -> Optional[Sequence[Tensor]]:
        """``seq`` with the partner's entry made (rolled) where only the first view's was given."""
        return F.pair_within_batch(seq[0]) if partner and seq is not None else seq

    def _valid_masks(self, valid: Optional[Sequence[Optional[Tensor]]], maps: Sequence[Tensor], kind: str,
                     only: Optional[int] = None) -> List[Optional[Tensor]]:
        """Per view, the bool mask at the maps' resolution (None where no mask was given); ``only``:
        just that view."""
        V = len(maps)
        if valid is None:
            return [None] * V
        validate.sequence("valid", valid, V, "bool masks or label maps (or None entries)")
        return [None if m is None or (only is not None and v != only)
                else F.resize_nearest(validate.mask(f"valid[{v}]", m, maps[v].shape[0], maps[v].device,
                                                    self.ignore_index, ndim=(maps[v].dim() - 1,),
                                                    others=f"{kind}[{v}] is"), maps[v].shape[2:])
                for v, m in enumerate(valid)]


class EntropyMix(_Mixer):
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
        temperature: temperature of ``"sample"``, a finite number > 0.
        check_values: check probabilities for non-finite values and the simplex (synchronises
            with the device; switch off in synchronisation-free GPU loops).
        ignore_index: the invalid label when ``valid`` holds integer label maps.
        share: how much, separately from where. ``None`` (default): every cell picks its view on
            its own, so the share each sample takes from the other views is whatever the selection
            gives (about half under ``"max"`` with two views). A fraction: every mixed sample takes
            ``round(share * cells)`` cells from views ``1 .. V-1`` and keeps view 0 elsewhere; the
            selection decides which cells (the widest margin of the best other view over view 0
            under ``"max"``; uniformly under ``"random"``, the control at equal share), ties broken
            by the generator. A ``(low, high)`` range: each sample draws its fraction uniformly
            from it. A cell with no valid pixel in the other views is never taken; with
            :meth:`within_batch` at ``share=1`` a sample keeps its own first cell (no duplicate
            samples). See :func:`entropymix.functional.select_views`.

    Entropies are comparable across views only when every view's prediction comes from the same
    model in the same mode (all eval or all train). The entropy runs eagerly; pass the teacher's
    predictions at its output stride, before upsampling, to make it cheaper (16x at stride 4),
    or opt in to a compiled kernel with :func:`entropymix.functional.set_compile`.

    Shapes:
        - views: V >= 2 tensors ``(B, C, H, W)`` of one dtype and device, or volumes
          ``(B, C, D, H, W)`` with a 3-D ``grid`` ``(gd, gh, gw)`` (or an int).
        - probs: V tensors ``(B, K, h, w)`` (``(h, w)`` may differ from ``(H, W)``; ``(B, K, d, h, w)``
          for volumes), or ``logits=``.
        - valid: optional V bool masks ``(B, h', w')``, or integer label maps whose
          ``ignore_index`` pixels are invalid (UniMatch's ``ignore_mask``), any resolution;
          entries may be ``None``.
        - output: ``(B, C, H, W)`` mixed tensor and a :class:`MixPlan` with a ``(B, gh, gw)`` index
          (``(B, C, D, H, W)`` and ``(B, gd, gh, gw)`` for volumes).

    Example:
        >>> mixer = EntropyMix(grid=(2, 2))
        >>> x, x_mix = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
        >>> sure, unsure = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
        >>> p_x = sure.view(1, 2, 1, 1).repeat(1, 1, 2, 2)      # teacher maps at half resolution
        >>> p_mix = torch.stack([sure, unsure]).repeat(2, 1).T.reshape(1, 2, 2, 2)  # unsure on the right
        >>> mixed, plan = mixer([x, x_mix], probs=[p_x, p_mix])
        >>> plan.index                                         # the most uncertain view per cell
        tensor([[[0, 1],
                 [0, 1]]])
        >>> plan.apply([torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long)])
        tensor([[[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [0, 0, 1, 1]]])
    """

    repr_fields = ("grid", "select", "p", "temperature")

    def __init__(self, grid: Grid = (4, 4), select: str = "max", p: float = 1.0,
                 temperature: float = 1.0, check_values: bool = True, ignore_index: int = 255, *,
                 share: Optional[F.Share] = None) -> None:
        super().__init__(p, ignore_index)
        # An int stays an int (that many cells on every spatial axis, images or volumes); a tuple
        # gives one count per axis and fixes the number of spatial dims.
        checked = validate.dims("grid", grid)
        self.grid = grid if isinstance(grid, int) else checked
        self.select = validate.choice("select", select, F.SELECT_MODES)
        self.temperature = validate.positive("temperature", temperature)
        self.check_values = bool(check_values)
        self.share = None if share is None else F.check_share(share)
        if self.share is not None:
            self.repr_fields = ("grid", "select", "p", "temperature", "share")

    def needs_predictions(self) -> Optional[str]:
        return None if self.select == "random" else f"select={self.select!r}"

    def _index(self, views, maps, kind, valid, generator, partner=False) -> Tensor:
        V, (B, _, *S), device = len(views), views[0].shape, views[0].device
        grid = validate.dims("grid", self.grid, len(S))  # an int: that many cells on every spatial axis
        axes = "(H, W)" if len(S) == 2 else "(X, Y, Z)"
        if any(g > n for g, n in zip(grid, S)):
            raise ValueError(f"grid {grid} is larger than the images {axes} = {tuple(S)}")
        if self.select == "random":
            return F.select_views(torch.zeros(V, B, *grid, device=device), "random", generator=generator,
                                  share=self.share)
        n = 1 if partner else V  # within_batch: the partner's maps are the first view's, rolled
        maps = validate.maps(kind, maps, n, B, device, spatial=len(S))
        s = tuple(maps[0].shape[2:])
        if any(g > m for g, m in zip(grid, s)):
            raise ValueError(f"grid {grid} is larger than {kind} maps {axes.lower()} = {s}")
        masks = self._valid_masks(valid, maps, kind)
        # One read of each map (entropy and value checks together), one synchronisation for all views.
        names = [kind] if partner else [f"{kind}[{v}]" for v in range(V)]
        ents = F._entropies(kind, names, maps, masks, self.check_values)
        assign = F._assignments(s, grid, device)  # the cells, once for every view
        counts = F._outer([a.sum(1) for a in assign]) if any(m is None for m in masks) else None
        cells, nonempty = zip(*(F._cell_means(e, assign, m, counts) for e, m in zip(ents, masks)))
        cells = torch.stack(cells)
        cell_valid = None
        if any(m is not None for m in masks):
            cell_valid = torch.stack([torch.ones_like(c, dtype=torch.bool) if v is None else v
                                      for c, v in zip(cells, nonempty)])
        if partner:  # the partner's cells: the batch's, rolled by one sample
            cells = torch.cat([cells, cells.roll(1, 1)])
            cell_valid = None if cell_valid is None else torch.cat([cell_valid, cell_valid.roll(1, 1)])
        return F.select_views(cells, self.select, self.temperature, generator, valid=cell_valid, share=self.share)


class CutMix(_Mixer):
    """UniMatch's CutMix (one random box per sample) with the :class:`EntropyMix` interface.

    Args:
        p: probability that a sample gets a box.
        size_min, size_max: box area (volume) as a fraction of the image, drawn uniformly.
        ratio: ``(low, high)`` range of the box aspect ``h / w`` (per axis for volumes), drawn uniformly.
        share: BCP's form instead: a box of ``floor(share * n)`` on every axis of length ``n``
            (BCP: ``2 / 3``); ``size_min``, ``size_max`` and ``ratio`` are then not used.
        shared: one box for the whole batch (BCP's ``context_mask``), else one per sample; ``p``
            is still drawn per sample.
        far_edge: with ``share``, whether a box may sit flush with the far edge of an axis (BCP's
            ``context_mask`` never does). :meth:`CutMix.bcp` gives BCP's form exactly.

    Images ``(B, C, H, W)`` get boxes, volumes ``(B, C, X, Y, Z)`` cuboids (see
    :func:`entropymix.functional.cutmix_boxes`).

    ``mixer([x, x_mix], probs=..., generator=g)`` returns ``(mixed, plan)``; ``mixed`` is ``x``
    with the box pasted from ``x_mix``, and ``plan`` is a pixel plan (``(B, H, W)`` index) that
    replays the box on labels, confidences and features at any resolution. ``probs``,
    ``logits`` and ``valid`` are accepted and ignored, so the mixers are interchangeable.
    All boxes are drawn at once on the generator's (or the images') device.

    Example:
        >>> mixed, plan = CutMix(p=1.0)([torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)],
        ...                             generator=torch.Generator().manual_seed(0))
        >>> torch.equal(mixed[:, 0], plan.source_map().float())   # the box is where view 1 shows
        True
    """

    two_views = True
    draws_p = True
    repr_fields = ("p", "size_min", "size_max", "ratio")

    def __init__(self, p: float = 0.5, size_min: float = 0.02, size_max: float = 0.4,
                 ratio: Tuple[float, float] = (0.3, 1 / 0.3), *, share: Optional[float] = None,
                 shared: bool = False, far_edge: bool = True) -> None:
        super().__init__(p)
        F.cutmix_boxes(0, (1, 1), p, size_min, size_max, ratio, share=share)  # validate the box arguments once
        self.size_min, self.size_max, self.ratio = float(size_min), float(size_max), tuple(ratio)
        self.share, self.shared = (None if share is None else float(share)), bool(shared)
        self.far_edge = bool(far_edge)
        if share is not None:
            self.repr_fields = ("p", "share", "shared", "far_edge")

    @classmethod
    def bcp(cls, mask_ratio: float = 2 / 3) -> "CutMix":
        """BCP's copy-paste cuboid (``context_mask`` of *Bidirectional Copy-Paste*, CVPR 2023): every
        sample mixed, one box of ``int(mask_ratio * n)`` on every axis shared by the batch, its start
        uniform in ``0 .. n - side - 1`` (never flush with the far edge). BCP also uses one cube for
        both copy-paste directions: replay the first plan for the second (``plan_l.apply(...)``).

        >>> CutMix.bcp()
        CutMix(p=1.0, share=0.6666666666666666, shared=True, far_edge=False)
        """
        return cls(p=1.0, share=mask_ratio, shared=True, far_edge=False)

    def _index(self, views, maps, kind, valid, generator, partner=False) -> Tensor:
        B, _, *S = views[0].shape
        # p is applied here, with UniMatch's statistics, so the base class keeps every box.
        return F.cutmix_boxes(B, S, self.p, self.size_min, self.size_max, self.ratio, share=self.share,
                              shared=self.shared, far_edge=self.far_edge, generator=generator, device=views[0].device)

    def _plan(self, views, probs, logits, valid, generator) -> MixPlan:
        # probs / logits / valid are ignored: CutMix accepts whatever an EntropyMix call passes.
        B, _, *S = validate.views(views, exactly="CutMix")
        return MixPlan(self._index(views, None, "probs", None, generator), 2, tuple(S), False)


class ClassMix(_Mixer):
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

    Example:
        >>> logits_mix = torch.tensor([[0.0, 9.0], [9.0, 0.0]]).T.reshape(1, 2, 1, 2)  # classes 1, 0
        >>> mixed, plan = ClassMix()([torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)],
        ...                          logits=[None, logits_mix], generator=torch.Generator().manual_seed(0))
        >>> int(plan.index.sum())                             # one of the two classes is pasted
        1
    """

    two_views = True

    def __init__(self, p: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__(p, ignore_index)

    def needs_predictions(self) -> Optional[str]:
        return "ClassMix"

    def _index(self, views, maps, kind, valid, generator, partner=False) -> Tensor:
        B, device = views[0].shape[0], views[0].device
        maps, valid = self._paired(maps, partner), self._paired(valid, partner)
        maps = validate.sequence(kind, maps, 2)
        pred = validate.prediction(f"{kind}[1]", maps[1], B, device, spatial=views[0].dim() - 2)
        mask = self._valid_masks(valid, [pred, pred], kind, only=1)[1]
        return F.classmix_masks(pred.argmax(1), pred.shape[1], mask, generator=generator)
