"""Functional layer: pure, batched tensor ops behind :class:`~entropymix.EntropyMix`,
:class:`~entropymix.CutMix`, :class:`~entropymix.ClassMix` and :class:`~entropymix.MixPlan`.

The grid rule is used everywhere: pixel ``(y, x)`` of any ``(h, w)`` map
belongs to cell ``(floor(y * gh / h), floor(x * gw / w))``. A pixel plan is the same rule with
``(gh, gw) = (H, W)``, so one gather serves grid plans, pixel plans and every resolution.

Nothing here loops over samples or cells, and nothing synchronises with the device unless a
value check (``check_values=True``) asks for it. Everything runs eagerly; :func:`set_compile`
opts in to a ``torch.compile`` kernel for the one bandwidth-heavy step, the per-pixel entropy.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import ContextManager, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _validation as validate
from ._validation import Grid

__all__ = [
    "entropy",
    "entropy_from_logits",
    "patch_entropy",
    "select_views",
    "apply_plan",
    "source_map",
    "pair_within_batch",
    "distinct_within_batch",
    "resize_nearest",
    "cutmix_boxes",
    "classmix_masks",
    "check_share",
    "set_compile",
    "warmup",
    "SELECT_MODES",
    "SIMPLEX_TOLERANCE",
]

SELECT_MODES = ("max", "min", "sample", "random")

# Row sums of probabilities that went through float16/bfloat16 on their way here (a softmax
# under autocast, then .float()) are off by up to K half-ulps of bfloat16. The tolerance must
# cover that whatever dtype the tensor has now; unnormalised scores are still far outside it.
SIMPLEX_TOLERANCE = 2e-2


def _float32_math(device: torch.device) -> ContextManager:
    """Autocast off for ``device``'s type while float32 math runs (a no-op outside autocast).

    Under ``torch.autocast`` matmuls run in float16/bfloat16; the cell sums, Gram matrices and
    KL reductions here must not (bfloat16 rounds pixel counts and cancels the Gram identity).
    """
    try:
        on = torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (e.g. "meta")
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# The per-pixel entropy (the one bandwidth-heavy step) and its value checks
# ----------------------------------------------------------------------------------------------

def _bad_probs(total: Tensor, low: Tensor) -> Tensor:
    """``(B, h, w)`` bool: rows that are no distribution, from their sum and minimum."""
    return ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)


def _check_logits(logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Two ``(B, h, w)`` bool maps: pixels failing the check (NaN, ``+inf``, or every class ``-inf``;
    ``amax`` propagates NaN), and pixels whose "logits" look like probabilities (every entry in
    ``[0, 1]``, summing to 1): a map of those is almost surely ``probs`` passed as ``logits=``."""
    high = logits.amax(1)
    return ~torch.isfinite(high), _looks_like_probs(logits, high)


def _looks_like_probs(logits: Tensor, high: Optional[Tensor] = None) -> Tensor:
    """``(B, h, w)`` bool: every entry in ``[0, 1]`` and the row summing to 1 (within the tolerance)."""
    high = logits.amax(1) if high is None else high
    return (logits.amin(1) >= 0) & (high <= 1) & ((logits.sum(1) - 1).abs() <= SIMPLEX_TOLERANCE)


def _logits_entropy(logits: Tensor, return_bad: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Entropy of ``softmax(logits)`` over dim 1; with ``return_bad``, also the ``(B, h, w)`` bool map
    of rows failing the value check (NaN, ``+inf`` or only ``-inf``: exactly the rows whose
    log-softmax is NaN, read off one class rather than from another pass over the logits)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    # -sum p log p, with p = 0 (a logit of -inf) contributing 0, not 0 * -inf = NaN: the product is
    # made in place and summed skipping its NaNs (those, and a failing row's, which the check
    # reports), the same values bit for bit as where(logp > -inf, -p * logp, 0).sum(1) without three
    # more full-size passes.
    ent = torch.nansum(logp.exp().mul_(logp), 1).neg_().add_(0.0)  # + 0.0: a zero entropy is +0, not -0
    return (ent, torch.isnan(logp[:, 0])) if return_bad else ent


# The eager path works through the batch in chunks of about this many elements: the same
# per-pixel sums bit for bit, without a (B, K, h, w) float32 temporary (1.5x faster on CPU).
EAGER_CHUNK = 1 << 22


Stats = Tuple[Tensor, Optional[Tensor], Optional[Tensor]]


def _eager_stats(kind: str, x: Tensor, check_values: bool, chunk: Optional[int] = None) -> Stats:
    """Exact entropy (entr() / log_softmax) of a ``(B, K, h, w)`` map and, with ``check_values``,
    the bool map of pixels failing the value check and (logits only) the map of pixels that look
    like probabilities (:func:`_check_logits`); ``chunk`` elements at a time."""
    rows = max(1, (chunk or EAGER_CHUNK) // max(1, math.prod(x.shape[1:])))
    ents, bads = [], []
    for c in x.split(rows):
        c = c.float()
        if kind == "probs":
            ent = torch.special.entr(c).sum(1)
            ents.append(ent)
            if check_values:
                # entr() is -inf at a negative or infinite entry and NaN at a NaN: the entropy's own
                # non-finite values are those rows (ent - ent is NaN exactly there), so only the row
                # sums take another pass
                bads.append((ent - ent).ne(0) | ((c.sum(1) - 1).abs() > SIMPLEX_TOLERANCE))
        elif check_values:
            ent, bad = _logits_entropy(c, return_bad=True)
            ents.append(ent), bads.append(bad)
        else:
            ents.append(_logits_entropy(c))
    # Probabilities passed as logits= are judged on the first sample: a cheap read, and conclusive
    # (real logits with every row in [0, 1] summing to 1 over a whole sample do not happen).
    looks = _looks_like_probs(x[:1].float()) if check_values and kind == "logits" else None
    cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts)  # noqa: E731  (one chunk: no copy)
    return cat(ents), cat(bads) if check_values else None, looks


# --- the opt-in compiled kernel -----------------------------------------------------------------

_COMPILE = {"enabled": os.environ.get("ENTROPYMIX_COMPILE", "0").lower() in ("1", "true", "on")}
_COMPILED: dict = {}


def set_compile(enabled: bool) -> bool:
    """Opt in to (or out of) the ``torch.compile`` kernel of the per-pixel entropy; returns the
    previous setting.

    Off by default (also ``ENTROPYMIX_COMPILE=1`` at import turns it on): every op then runs
    eagerly, exactly, on every supported torch, with no compiler needed and no first-call cost.
    The compiled kernel reads each probability (or logit) map once and yields the entropy with
    what the value checks need; it is compiled once per device type, dtype and input kind, for
    every shape where torch allows (:func:`warmup` pays that ahead of training), and needs a
    C++ compiler on CPU or Triton on CUDA. If compilation fails, the eager path is used from
    then on, with one warning. On CPU it cuts the mixer's own time by about half, about 1% of
    a training step (``benchmarks/step_overhead.py``).

    >>> previous = set_compile(False)   # the default: eager
    >>> set_compile(previous)
    False
    """
    previous = _COMPILE["enabled"]
    _COMPILE["enabled"] = bool(enabled)
    return previous


def _probs_stats(probs: Tensor) -> Stats:
    """Entropy of ``(B, K, h, w)`` probabilities and the failing-pixel map in one fused pass.

    The loop computes sum(where(p > 0, -p log p, 0)), which inductor vectorises (its lowering of
    entr() checks NaN element by element). entr()'s values for rows holding NaN or a negative
    entry are then set on the small per-pixel maps from the row sum and minimum, so the compiled
    and eager paths agree: NaN where a row has NaN, -inf where it has a negative entry.
    """
    p = probs.float()
    ent, total, low = torch.where(p > 0, -p * p.log(), 0.0).sum(1), p.sum(1), p.amin(1)
    ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))
    return ent, _bad_probs(total, low), None


def _logits_stats(logits: Tensor) -> Stats:
    return (_logits_entropy(logits), *_check_logits(logits.float()))


def _dynamic(view: Tensor) -> ContextManager:
    """Mark every dim of ``view`` dynamic without specialising 1-sized dims or equal sizes, so one
    compilation serves every batch, class count and crop: backed symbols with size-oblivious
    reasoning and no duck sizing where torch has them (one fused loop), unbacked symbols where
    only those exist. On older torch neither exists and ``dynamic=True`` alone is used (a batch
    of 1 may then compile once more)."""
    from torch.fx.experimental import _config as fx_config
    if hasattr(fx_config, "backed_size_oblivious") and hasattr(fx_config, "use_duck_shape"):
        for d in range(view.dim()):
            torch._dynamo.mark_dynamic(view, d)
        return fx_config.patch(backed_size_oblivious=True, use_duck_shape=False)
    mark = getattr(torch._dynamo, "mark_unbacked", None) or getattr(torch._dynamo.decorators, "mark_unbacked", None)
    if mark is not None:
        for d in range(view.dim()):
            mark(view, d)
    return contextlib.nullcontext()


def _compiled_stats(kind: str, x: Tensor) -> Optional[Stats]:
    """The fused stats through ``torch.compile``, or None when the kernel is off or failed."""
    if not _COMPILE["enabled"] or torch.compiler.is_compiling() or x.numel() == 0 or x.device.type == "meta":
        return None
    fn = _probs_stats if kind == "probs" else _logits_stats
    try:
        compiled = _COMPILED.get(fn)
        if compiled is None:
            compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
        # An alias carries the marks, not the caller's tensor (detach(): no autograd needed here,
        # and no _base whose sizes dynamo would guard).
        view = x.detach()
        with _dynamic(view):
            return compiled(view)
    except Exception as err:  # a missing C++ compiler / triton, an older torch: never break training
        _COMPILE["enabled"] = False
        warnings.warn(f"entropymix: torch.compile kernel disabled ({type(err).__name__}: {err}); "
                      "using the eager entropy", RuntimeWarning, stacklevel=4)
        return None


def warmup(device: Union[str, torch.device] = "cpu", dtypes: Sequence[torch.dtype] = (torch.float32,),
           kinds: Sequence[str] = ("probs", "logits")) -> None:
    """Compile the opt-in entropy kernels now, so the first training step does not wait for them.

    One small call per kind and dtype compiles the kernel that then serves every shape. A no-op
    while the kernel is off (:func:`set_compile`).
    """
    device = torch.device(device)
    for kind in kinds:
        validate.choice("kinds", kind, ("probs", "logits"))
        for dtype in dtypes:
            x = torch.rand(2, 3, 5, 6, device=device).softmax(1).to(dtype)
            _compiled_stats(kind, x if kind == "probs" else x.log())


_WARNED_PROBS_AS_LOGITS = [False]


def _raise_if_bad(kind: str, names: Sequence[str], maps: Sequence[Tensor], bads: Sequence[Tensor],
                  looks: Sequence[Tensor] = ()) -> None:
    """Raise for the first map whose bool ``(B, h, w)`` map of failing pixels has one, and warn once
    per process when every valid pixel of a logit map (``looks``: 0-d bools) looks like
    probabilities; a single synchronisation for all maps (the error path reads more, to say what
    is wrong)."""
    flags = torch.stack([b.any() for b in bads] + list(looks)).tolist()  # the one synchronisation
    if any(flags[len(bads):]) and not any(flags[:len(bads)]) and not _WARNED_PROBS_AS_LOGITS[0]:
        _WARNED_PROBS_AS_LOGITS[0] = True
        v = flags.index(True, len(bads)) - len(bads)
        warnings.warn(f"{names[v]}: every row is in [0, 1] and sums to 1 over dim 1, as probabilities do "
                      f"(shape {validate.shape(maps[v])}); softmax is applied to logits= again, which flattens "
                      "the entropies and changes the plan: pass probs= for probabilities (warned once)",
                      UserWarning, stacklevel=5)
    if not any(flags[:len(bads)]):
        return
    v = flags.index(True)
    name, m = names[v], maps[v]
    if kind == "logits":
        raise ValueError(f"{name} contains NaN or +inf, or a pixel whose logits are all -inf (shape {validate.shape(m)})")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains non-finite values (shape {validate.shape(m)})")
    raise ValueError(f"{name} must be probabilities: non-negative and summing to 1 over dim 1 "
                     f"within {SIMPLEX_TOLERANCE} (shape {validate.shape(m)}); pass logits= for unnormalised scores")


def _entropies(kind: str, names: Sequence[str], maps: Sequence[Tensor], masks: Sequence[Optional[Tensor]],
               check_values: bool) -> List[Tensor]:
    """``(B, h, w)`` float32 entropy maps of V probability / logit maps; with ``check_values``, the
    value checks of their valid pixels (``masks``, bool at each map's resolution, or None) with
    one synchronisation for all. What an ignored pixel holds is never read, so never rejected."""
    ents, bads, looks = [], [], []
    with _float32_math(maps[0].device):
        for m, mask in zip(maps, masks):
            stats = _compiled_stats(kind, m)
            ent, bad, look = _eager_stats(kind, m, check_values) if stats is None else stats
            ents.append(ent)
            if check_values:
                bads.append(bad if mask is None else bad & mask)
            # judged where the map's pixels are valid; an empty map has none, so it looks like nothing
            if check_values and look is not None and look.numel():
                first = None if mask is None else mask[:look.shape[0]]
                looks.append(look.all() if first is None else (look | ~first).all() & first.any())
    if check_values:
        _raise_if_bad(kind, names, maps, bads, looks)
    return ents


# ----------------------------------------------------------------------------------------------
# Entropy
# ----------------------------------------------------------------------------------------------

def entropy(probs: Tensor, *, check_values: bool = True) -> Tensor:
    """Per-pixel Shannon entropy ``H = -sum_k p_k log p_k`` (natural log, ``0 log 0 = 0``).

    Args:
        probs: ``(B, K, h, w)`` class probabilities, any floating dtype, any memory format.
        check_values: raise ``ValueError`` for non-finite values or rows off the simplex (more
            than ``SIMPLEX_TOLERANCE`` = 0.02, which covers bfloat16 rounding whatever the dtype
            now); synchronises with the device, switch off in synchronisation-free loops.

    Returns:
        ``(B, h, w)`` float32 entropy in ``[0, log K]``.

    >>> entropy(torch.full((1, 4, 2, 2), 0.25))  # uniform over 4 classes: log 4
    tensor([[[1.3863, 1.3863],
             [1.3863, 1.3863]]])
    """
    validate.prediction("probs", probs)
    return _entropies("probs", ["probs"], [probs], [None], check_values)[0]


def entropy_from_logits(logits: Tensor, *, check_values: bool = True) -> Tensor:
    """Per-pixel entropy of ``softmax(logits, dim=1)``, stable for huge logits.

    Args:
        logits: ``(B, K, h, w)`` unnormalised scores, any floating dtype. ``-inf`` is allowed
            (a class with zero probability); ``+inf``, NaN and a pixel of only ``-inf`` are not.
        check_values: raise ``ValueError`` for those (synchronises).

    Returns:
        ``(B, h, w)`` float32 entropy in ``[0, log K]``.

    >>> entropy_from_logits(torch.tensor([0.0, 1e4, -math.inf]).view(1, 3, 1, 1))  # one-hot: 0
    tensor([[[0.]]])
    """
    validate.prediction("logits", logits)
    return _entropies("logits", ["logits"], [logits], [None], check_values)[0]


# ----------------------------------------------------------------------------------------------
# The grid rule
# ----------------------------------------------------------------------------------------------

def _cells(n: int, g: int, device: torch.device) -> Tensor:
    """Cell of each of ``n`` rows for a grid of ``g`` cells: ``floor(y * g / n)``."""
    return torch.arange(n, device=device).mul_(g).div_(n, rounding_mode="floor")


def _assignment(n: int, g: int, device: torch.device) -> Tensor:
    """``(g, n)`` float32 0/1 matrix with a one where row ``y`` belongs to cell ``c``."""
    return (_cells(n, g, device)[None, :] == torch.arange(g, device=device)[:, None]).float()


def resize_nearest(x: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest resize of the last ``len(size)`` dims by the grid rule: along each axis, element ``i``
    of the output (length ``n``) reads element ``floor(i * m / n)`` of the input (length ``m``).

    Works for any dtype (bool masks, labels) and 2 or 3 spatial dims; a no-op view when the size
    already matches. Unlike ``F.interpolate(mode="nearest")`` it is exactly the rule used by
    plans, so a mask resized here lines up with a plan applied at the same size.

    >>> resize_nearest(torch.tensor([[1, 2]]), (1, 5))      # 5 columns over 2 cells: 3 + 2
    tensor([[1, 1, 1, 2, 2]])
    """
    size = tuple(size)
    have = tuple(x.shape[-len(size):])
    if have == size:
        return x
    if 0 in have:
        raise ValueError(f"cannot resize an empty map of shape {validate.shape(x)}")
    for axis, (m, n) in enumerate(zip(have, size), start=x.dim() - len(size)):
        x = x.index_select(axis, _cells(n, m, x.device))
    return x


def _outer(vectors: Sequence[Tensor]) -> Tensor:
    """``v0[:, None] * v1[None, :]`` (and so on, one axis per vector)."""
    if len(vectors) == 2:
        return vectors[0][:, None] * vectors[1][None, :]
    out = vectors[0]
    for v in vectors[1:]:
        out = out[..., None] * v
    return out


def _cell_sums(x: Tensor, assignments: Sequence[Tensor]) -> Tensor:
    """Sums of ``x`` over the cells of its last ``len(assignments)`` dims; ``assignments[d]`` is the
    ``(g, n)`` 0/1 matrix of axis ``d``. Small matmuls: deterministic, batched, no per-cell loop."""
    if len(assignments) == 2:
        return assignments[0] @ x @ assignments[1].t()
    for d, a in enumerate(assignments):
        axis = x.dim() - len(assignments) + d
        x = (x.movedim(axis, -1) @ a.t()).movedim(-1, axis)
    return x


def patch_entropy(entropy: Tensor, grid: Grid, valid: Optional[Tensor] = None, *, ignore_index: int = 255,
                  return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Mean entropy of each grid cell over its valid pixels (voxels).

    Args:
        entropy: ``(*, h, w)`` per-pixel entropy (e.g. from :func:`entropy`; ``*`` any number of
            leading dims, e.g. views x batch), or ``(*, x, y, z)``
            for a 3-D grid.
        grid: ``(gh, gw)`` cells, an int for a square 2-D grid, or ``(g1, g2, g3)`` for volumes;
            at most the map's size on every axis.
        valid: optional ``(*, h', w')`` (``(*, x', y', z')``) bool mask of pixels to count, or an integer label map
            whose ``ignore_index`` pixels are invalid; resized to ``(h, w)`` by the grid rule
            when its resolution differs. Values at invalid pixels (NaN included) never matter.
        ignore_index: the invalid label of an integer ``valid``.
        return_valid: also return the bool ``(*, gh, gw)`` map of cells with a valid pixel.

    Returns:
        ``(*, gh, gw)`` (``(*, g1, g2, g3)``) float32 mean entropy; a cell without valid pixels gets 0 (and ``False``
        in the returned cell mask, which :func:`select_views` uses so that it is never preferred).
        Computed in float32 under ``torch.autocast`` too (pixel counts stay exact).

    >>> ent = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    >>> patch_entropy(ent, (2, 2))  # floor(y * 2 / 3): rows {0, 1}, {2}; columns likewise
    tensor([[2.0000, 3.5000],
            [6.5000, 8.0000]])
    >>> patch_entropy(ent, 1, valid=torch.tensor([[0, 0, 255]] * 3))  # label map: 255 ignored
    tensor([[3.5000]])
    """
    validate.tensor("entropy", entropy, floating=True)
    grid = validate.dims("grid", grid)  # an int: a square 2-D grid; a tuple: one count per spatial axis
    n = len(grid)
    if n == 3 and entropy.dim() < 4:  # (B, h, w) is a batch of 2-D maps: a 3-D grid needs (B, x, y, z)
        raise TypeError(f"grid must be an int or a pair of ints for entropy of shape {validate.shape(entropy)}, "
                        f"a batch of 2-D maps; a 3-D grid {grid} needs (B, x, y, z) entropy")
    if entropy.dim() < n:
        raise ValueError(f"entropy must have at least {n} dims (*, {', '.join('hw' if n == 2 else 'xyz')}), "
                         f"got shape {validate.shape(entropy)}")
    size = tuple(entropy.shape[entropy.dim() - n:])
    if any(g > m for g, m in zip(grid, size)):
        raise ValueError(f"grid {grid} is larger than the entropy map {size} (shape {validate.shape(entropy)})")
    lead = entropy.shape[:entropy.dim() - n]
    mask = None
    if valid is not None:
        mask = validate.mask("valid", valid, None, None, ignore_index, ndim=None)
        if mask.shape[:mask.dim() - n] != lead or mask.dim() != entropy.dim():
            raise ValueError(f"valid must have shape (*, {', '.join('hw' if n == 2 else 'xyz')}) with * = {tuple(lead)}, "
                             f"got {validate.shape(valid)} for entropy {validate.shape(entropy)}")
        if mask.device != entropy.device:
            raise ValueError(f"valid is on {mask.device} but entropy is on {entropy.device}")
        mask = resize_nearest(mask, size)
    means, nonempty = _cell_means(entropy, _assignments(size, grid, entropy.device), mask)
    if return_valid and nonempty is None:
        nonempty = torch.ones_like(means, dtype=torch.bool)
    return (means, nonempty) if return_valid else means


def _assignments(size: Sequence[int], grid: Sequence[int], device: torch.device) -> List[Tensor]:
    """The ``(g, n)`` cell-assignment matrix of every axis (see :func:`_assignment`), made once for
    axes alike (a square image on a square grid)."""
    made: dict = {}
    for n, g in zip(size, grid):
        if (n, g) not in made:
            made[n, g] = _assignment(n, g, device)
    return [made[n, g] for n, g in zip(size, grid)]


def _cell_means(entropy: Tensor, assign: Sequence[Tensor], mask: Optional[Tensor],
                counts: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Cell means of a checked entropy map over its valid pixels (``mask``: bool at its resolution, or
    None) and the bool map of non-empty cells (None without a mask); ``counts``: the pixels per cell
    when there is no mask, if already known. Float32 whatever autocast says."""
    with _float32_math(entropy.device):
        # where, not a product: a NaN or inf at an invalid pixel must not reach its cell.
        ent = entropy.float() if mask is None else torch.where(mask, entropy.float(), 0.0)
        sums = _cell_sums(ent, assign)
        if mask is None:
            counts = _outer([a.sum(1) for a in assign]) if counts is None else counts
            return sums / counts, None
        counts = _cell_sums(mask.float(), assign)
        return sums / counts.clamp_min(1), counts > 0


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------

def _uniform(shape: Tuple[int, ...], device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    # Draw on the generator's device so a CPU generator gives the same plan on CPU and CUDA.
    src = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=src).to(device, non_blocking=True)


Share = Union[float, Tuple[float, float]]


def select_views(patch_entropy: Tensor, mode: str = "max", temperature: float = 1.0,
                 generator: Optional[torch.Generator] = None, *, valid: Optional[Tensor] = None,
                 share: Optional[Share] = None) -> Tensor:
    """Choose a source view for every cell.

    Args:
        patch_entropy: ``(V, B, gh, gw)`` (or ``(V, B, g1, g2, g3)``) cell entropies of the V views.
        mode: ``"max"`` (most uncertain view), ``"min"``, ``"sample"`` (categorical with
            probabilities ``softmax(E / temperature)`` over views) or ``"random"`` (uniform,
            entropy and validity ignored: a grid-CutMix baseline).
        temperature: softmax temperature of ``"sample"``, > 0.
        generator: random source of ``"sample"`` / ``"random"``.
        valid: optional bool cells shaped like ``patch_entropy`` that hold a valid pixel; an empty cell is
            never preferred over a non-empty one. Ties go to the lowest view index.
        share: how much each sample takes from views ``1 .. V-1`` (view 0 is the image being mixed
            into), as a fraction of its cells: ``round(share * cells)`` cells, or a ``(low, high)``
            range from which each sample draws its own fraction uniformly (CutMix-like). The mode
            then decides *where*: the cells whose best other view beats view 0 by the widest
            margin (``"max"``: most uncertain relative to view 0; ``"min"``: least; ``"sample"``:
            by Gumbel-perturbed scores; ``"random"``: uniformly), each taken from that best view;
            ties are broken by ``generator``. A cell whose other views have no valid pixel is never
            taken, so a sample with fewer such cells takes fewer. ``None`` (default): each cell
            independently, as above.

    Returns:
        ``(B, *grid)`` int64 view index.

    >>> cells = torch.tensor([[[[0.1, 0.9]]], [[[0.5, 0.2]]]])  # V=2 views, B=1, a 1 x 2 grid
    >>> select_views(cells, "max")
    tensor([[[1, 0]]])
    >>> wide = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]], [[[0.9, 0.3, 0.8, 0.4]]]])  # margins 0.8, 0.1, 0.5, 0.0
    >>> select_views(wide, "max", share=0.5)          # the two cells of widest margin
    tensor([[[1, 0, 1, 0]]])
    """
    validate.tensor("patch_entropy", patch_entropy, ndim=(4, 5), floating=True, volumes=True)
    validate.generator(generator)
    validate.choice("mode", mode, SELECT_MODES)
    validate.positive("temperature", temperature)
    V = patch_entropy.shape[0]
    if V < 1:
        raise ValueError(f"patch_entropy needs at least one view, got shape {validate.shape(patch_entropy)}")
    ent = patch_entropy.float()
    if share is not None:
        share = check_share(share)
    if mode == "random" and share is None:
        u = _uniform(ent.shape[1:], ent.device, generator)
        return (u * V).long().clamp_max_(V - 1)
    if valid is not None and mode != "random":
        if valid.shape != patch_entropy.shape or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor shaped like patch_entropy {validate.shape(patch_entropy)}, "
                             f"got {valid.dtype} {validate.shape(valid)}")
        # Where no view has a valid pixel, every view competes on entropy alone.
        valid = valid | ~valid.any(0, keepdim=True)
    if mode == "max":
        score = ent
    elif mode == "min":
        score = -ent
    elif mode == "random":  # with a share: uniform scores, so uniform cells and a uniform other view
        score = _uniform(ent.shape, ent.device, generator)
    else:  # "sample": Gumbel-max draws exactly from softmax(E / T), batched over cells.
        u = _uniform(ent.shape, ent.device, generator)
        gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))
        score = ent / temperature + gumbel
    if valid is not None and mode != "random":
        score = torch.where(valid, score, -math.inf)
    if share is None:
        # torch.argmax returns the first maximal index: ties go to the lowest view.
        return score.argmax(0)
    return _take_share(score, share, generator)


def check_share(share: object) -> Share:
    """A fraction in ``[0, 1]``, or a ``(low, high)`` range with ``0 <= low <= high <= 1``."""
    if isinstance(share, (tuple, list)):
        if (len(share) != 2 or not all(validate._number(s) for s in share)
                or not 0.0 <= share[0] <= share[1] <= 1.0):
            raise ValueError(f"share must be a fraction in [0, 1] or a (low, high) range with "
                             f"0 <= low <= high <= 1, got {share!r}")
        return float(share[0]), float(share[1])
    return validate.probability("share", share)


def _take_share(score: Tensor, share: Share, generator: Optional[torch.Generator]) -> Tensor:
    """``(B, *grid)`` index taking ``round(share * cells)`` cells per sample from views ``1..V-1``: the
    cells of widest margin ``max_{v >= 1} score_v - score_0``, ties in random order; a cell whose
    margin is ``-inf`` (no valid pixel in any other view) is never taken."""
    V, B, *grid = score.shape
    n = math.prod(grid)
    if V == 1 or n == 0:
        return torch.zeros(B, *grid, dtype=torch.long, device=score.device)
    best, which = score[1:].max(0)
    margin = (best - score[0]).flatten(1)                                   # (B, n); +inf: view 0 empty
    if isinstance(share, tuple):  # a fraction per sample, U(low, high)
        low, high = share
        fraction = low + (high - low) * _uniform((B, 1), score.device, generator).double()
    else:
        fraction = torch.full((B, 1), share, dtype=torch.float64, device=score.device)
    count = (fraction * n + 0.5).floor()                                    # round half up, per sample
    # Cells in random order, then a stable sort by margin: equal margins keep the random order.
    shuffle = _uniform((B, n), score.device, generator).argsort(1)
    order = margin.gather(1, shuffle).nan_to_num(nan=-math.inf).sort(dim=1, descending=True, stable=True).indices
    ranked = (torch.arange(n, device=score.device).expand(B, n) < count).byte()  # the first `count` in that order
    take = torch.zeros_like(ranked).scatter(1, shuffle.gather(1, order), ranked).bool()  # uint8: any device scatters it
    take &= margin > -math.inf
    return torch.where(take.view(B, *grid), which + 1, 0)


# ----------------------------------------------------------------------------------------------
# Applying a plan
# ----------------------------------------------------------------------------------------------

def source_map(index: Tensor, size: Sequence[int]) -> Tensor:
    """``(B, *size)`` source view of every pixel (voxel) for a ``(B, gh, gw)`` (``(B, g1, g2, g3)``)
    plan index."""
    validate.tensor("index", index, ndim=(3, 4), volumes=True)
    return resize_nearest(index, validate.dims("size", tuple(size), index.dim() - 1))


def apply_plan(index: Tensor, tensors: Sequence[Tensor], *, num_views: Optional[int] = None) -> Tensor:
    """Compose one tensor from V by a plan: a pure gather, values are never interpolated.

    Pixel ``(y, x)`` of sample ``b`` is ``tensors[v][b, ..., y, x]`` with
    ``v = index[b, floor(y * gh / h), floor(x * gw / w)]``; volumes follow the same rule per axis.

    Args:
        index: ``(B, gh, gw)`` int64 plan (a pixel plan is ``(B, H, W)``), or ``(B, g1, g2, g3)``
            (``(B, X, Y, Z)``) for volumes.
        tensors: V tensors of one shape ``(B, *s)`` or ``(B, C, *s)`` with as many spatial dims
            as the plan, and one device, any resolution; ``index`` must be in ``[0, V)``.
        num_views: the plan's view count, to check ``len(tensors)`` against.

    Returns:
        A new tensor shaped like ``tensors[0]`` (and in its memory format for 4-D inputs). Its
        dtype is the promotion of the tensors' dtypes, as ``torch.where`` does
        (``torch.result_type``): bfloat16 and float32 confidences give float32, every value exact.

    >>> index = torch.tensor([[[0, 1]]])                     # a 1 x 2 grid: right cell from view 1
    >>> apply_plan(index, [torch.zeros(1, 2, 3, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.long)])
    tensor([[[0, 0, 1],
             [0, 0, 1]]])
    """
    size = _check_plan_inputs(index, tensors, num_views)
    return _mix(_view_masks(index, len(tensors), size), tensors)


def _check_plan_inputs(index: Tensor, tensors: Sequence[Tensor], num_views: Optional[int]) -> Tuple[int, ...]:
    validate.tensor("index", index, ndim=(3, 4), volumes=True)
    n = index.dim() - 1  # spatial dims
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64, got {index.dtype}")
    V = len(validate.sequence("tensors", tensors))
    if num_views is not None and V != num_views:
        raise ValueError(f"the plan mixes {num_views} views but {V} tensors were given")
    if V < 1:
        raise ValueError("tensors is empty")
    first = validate.tensor("tensors[0]", tensors[0], ndim=(n + 1, n + 2))
    for v, t in enumerate(tensors):
        validate.tensor(f"tensors[{v}]", t)
        if t.shape != first.shape or t.device != first.device:
            raise ValueError(f"tensors must share shape and device: tensors[0] is {validate.shape(first)} "
                             f"on {first.device}, tensors[{v}] is {validate.shape(t)} on {t.device}")
    if first.shape[0] != index.shape[0]:
        raise ValueError(f"batch size mismatch: index {validate.shape(index)} vs tensors {validate.shape(first)}")
    if index.device != first.device:
        raise ValueError(f"index is on {index.device} but tensors are on {first.device}")
    return tuple(first.shape[-n:])


def _view_masks(index: Tensor, num_views: int, size: Sequence[int]) -> List[Tensor]:
    """Bool ``(B, *size)`` pixel masks of views ``1 .. V-1``: compared at cell level, then resized."""
    return [resize_nearest(index == v, size) for v in range(1, num_views)]


def _mix(masks: Sequence[Tensor], tensors: Sequence[Tensor]) -> Tensor:
    out = tensors[0]
    for mask, t in zip(masks, tensors[1:]):
        # A (B, 1, h, w) mask broadcasts over channels, so the select never copies it; where()
        # promotes mixed dtypes step by step, which ends at the promotion of them all.
        out = torch.where(mask[:, None] if t.dim() > mask.dim() else mask, t, out)
    return out.clone() if len(tensors) == 1 else out


# ----------------------------------------------------------------------------------------------
# Mixing a batch with itself
# ----------------------------------------------------------------------------------------------

def pair_within_batch(t: Tensor) -> List[Tensor]:
    """``[t, t.roll(1, 0)]``: a batch and its partners, to mix a batch with itself.

    Sample ``b`` is paired with sample ``b - 1`` (sample 0 with the last). For ``B >= 2`` no sample
    is its own partner, and for ``B >= 3`` no two samples are each other's (unlike ``t.flip(0)``,
    which pairs ``b`` with ``B-1-b`` both ways and the middle of an odd batch with itself). Use it
    for the views, the teacher's maps and every replay of a plan made by ``mixer.within_batch``.

    >>> pair_within_batch(torch.tensor([0, 1, 2]))
    [tensor([0, 1, 2]), tensor([2, 0, 1])]
    """
    validate.tensor("t", t)
    if t.dim() == 0:
        raise ValueError("t must have a batch dimension, got a 0-D tensor")
    return [t, t.roll(1, 0)]


def distinct_within_batch(index: Tensor) -> Tensor:
    """Make a 2-view plan over ``pair_within_batch`` views give distinct samples (no sync, no loop).

    At ``B = 2`` both samples mix the same two images: the second takes the first one's index, so
    every cell shows one image in one sample and the other image in the other. At ``B >= 3`` a
    sample whose index is all 1 (taken whole from its partner) keeps its own first cell; then no two
    samples are equal when the images differ everywhere (sample ``b`` shows image ``b`` somewhere,
    where only samples ``b`` and ``b + 1`` could, and sample ``b + 1`` shows its own image somewhere).

    Args:
        index: ``(B, *cells)`` int64 index of a 2-view plan.

    Returns:
        A new index of the same shape.

    >>> distinct_within_batch(torch.tensor([[[1, 1]], [[0, 1]], [[1, 0]]]))
    tensor([[[0, 1]],
            [[0, 1]],
            [[1, 0]]])
    """
    validate.tensor("index", index)
    if index.dim() < 2 or index.dtype != torch.int64:
        raise ValueError(f"index must be an int64 (B, *cells) plan index, got {index.dtype} {validate.shape(index)}")
    B = index.shape[0]
    if B == 2:
        return index[:1].expand_as(index).clone()
    flat = index.flatten(1)
    if B < 3 or flat.shape[1] == 0:
        return index.clone()
    whole = (flat == 1).all(1, keepdim=True)
    first = torch.arange(flat.shape[1], device=index.device) == 0
    return flat.masked_fill(whole & first, 0).view_as(index)


# ----------------------------------------------------------------------------------------------
# CutMix boxes (UniMatch statistics, batched)
# ----------------------------------------------------------------------------------------------

_CUTMIX_TRIES = 128


def cutmix_boxes(batch_size: int, size: Sequence[int], p: float = 0.5, size_min: float = 0.02,
                 size_max: float = 0.4, ratio: Tuple[float, float] = (0.3, 1 / 0.3), *,
                 share: Optional[float] = None, shared: bool = False, far_edge: bool = True,
                 generator: Optional[torch.Generator] = None,
                 device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """One random box (a cuboid for volumes) per sample, batched.

    **UniMatch's statistics** (``obtain_cutmix_box``, the default): with probability ``p`` a sample
    gets a box of area ``U(size_min, size_max) * H * W`` and aspect ``h / w = U(ratio)``, whose
    corner is uniform among the positions where it fits. UniMatch draws aspect and position again
    until the box fits; here 128 candidates are drawn at once and the first that fits is kept, the
    same distribution (if none fits, which happens with probability below 1e-4 at the default
    sizes, the last aspect is kept and the box is shifted inside the image). For a volume
    ``(X, Y, Z)`` the same holds per axis: volume ``U(size_min, size_max) * X * Y * Z``, and for
    each axis ``d >= 1`` an aspect ``side_0 / side_d = U(ratio)``, drawn independently.

    **BCP's form** (``share=`` given, e.g. ``2 / 3``): a box of ``floor(share * n)`` elements on
    every axis of length ``n`` (at least 1), at a uniform position among all where it fits;
    ``size_min``, ``size_max`` and ``ratio`` are not used. ``far_edge=False`` leaves out the last
    of those positions, the one flush with the far edge, as BCP's ``context_mask`` does (its start
    is ``randint(0, n - side)``, ``0 .. n - side - 1``); a box as long as its axis starts at 0.

    ``shared=True`` draws one box for the whole batch (BCP shares it); ``p`` still decides, per
    sample, whether a sample gets it (at ``p < 1`` some samples of a batch get the box, others
    none).

    Returns:
        ``(B, *size)`` int64 pixel plan: 1 inside the box (taken from the second view), else 0.

    >>> boxes = cutmix_boxes(4, (32, 32), p=1.0, generator=torch.Generator().manual_seed(0))
    >>> boxes.shape, bool(((boxes.float().mean((1, 2)) >= 0.0) & (boxes.float().mean((1, 2)) <= 0.4)).all())
    (torch.Size([4, 32, 32]), True)
    >>> cube = cutmix_boxes(2, (12, 12, 9), p=1.0, share=2 / 3, shared=True)   # BCP: 8 x 8 x 6, shared
    >>> cube.shape, int(cube[0].sum()), torch.equal(cube[0], cube[1])
    (torch.Size([2, 12, 12, 9]), 384, True)
    """
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    size = validate.dims("size", tuple(size) if isinstance(size, (tuple, list)) else size)
    validate.probability("p", p)
    if not 0.0 <= size_min <= size_max <= 1.0:
        raise ValueError(f"need 0 <= size_min <= size_max <= 1, got size_min={size_min!r}, size_max={size_max!r}")
    if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}")
    if share is not None and not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0.0 < share <= 1.0):
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    validate.generator(generator)
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    n, T = len(size), _CUTMIX_TRIES
    B = 1 if shared else batch_size
    # built on the device by fills: torch.tensor(size, device=cuda) is a blocking host-to-device copy
    dims = torch.stack([torch.full((), float(s), dtype=torch.float64, device=device) for s in size])  # (n,)
    if share is not None:
        u = _uniform((B, 1 + n), device, generator).double()
        sides = (share * dims).floor().clamp_min(1).expand(B, n)
        corner = (u[:, 1:] * (dims - sides + (1 if far_edge else 0)).clamp_min(1)).floor()
    else:
        u = _uniform((B, 2 + (2 * n - 1) * T), device, generator).double()
        amount = (size_min + (size_max - size_min) * u[:, 1:2]) * math.prod(size)        # (B, 1)
        r = [ratio[0] + (ratio[1] - ratio[0]) * u[:, 2 + d * T:2 + (d + 1) * T] for d in range(n - 1)]
        if n == 2:  # UniMatch's own expressions: the same boxes, bit for bit
            sides = [torch.sqrt(amount * r[0]).floor(), torch.sqrt(amount / r[0]).floor()]
        else:       # side_0 = (volume * r_1 * r_2)^(1/3), side_d = side_0 / r_d
            first = (amount * math.prod(r)) ** (1 / n)
            sides = [first.floor()] + [(first / rd).floor() for rd in r]
        # corners, last axis first (the 2-D order: x, then y), T candidates each
        base = 2 + (n - 1) * T
        starts = {d: (u[:, base + k * T:base + (k + 1) * T] * size[d]).floor() for k, d in enumerate(reversed(range(n)))}
        fits = torch.stack([starts[d] + sides[d] <= size[d] for d in range(n)]).all(0)
        # First candidate that fits (argmax of a bool finds the first True); none fits -> the last.
        pick = torch.where(fits.any(1), fits.byte().argmax(1), T - 1)[:, None]
        sides = torch.cat([sides[d].gather(1, pick).clamp(max=size[d]) for d in range(n)], 1)  # (B, n)
        corner = torch.minimum(torch.cat([starts[d].gather(1, pick) for d in range(n)], 1), dims - sides)
    inside = torch.ones((), dtype=torch.bool, device=device)
    for d in range(n):
        coord = torch.arange(size[d], device=device, dtype=torch.float64).view(1, *[-1 if e == d else 1 for e in range(n)])
        lo, hi = (t[:, d].view(-1, *[1] * n) for t in (corner, corner + sides))
        inside = inside & (coord >= lo) & (coord < hi)
    mixed = _uniform((batch_size,), device, generator) < p if shared else u[:, 0] < p
    return (inside.expand(batch_size, *size) & mixed.view(-1, *[1] * n)).long()


# ----------------------------------------------------------------------------------------------
# ClassMix / DACS (half of the predicted classes, batched)
# ----------------------------------------------------------------------------------------------

def classmix_masks(labels: Tensor, num_classes: int, valid: Optional[Tensor] = None, *,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """ClassMix's paste masks: per sample, the pixels of half of the classes present in ``labels``.

    As in ClassMix / DACS, ``ceil(n / 2)`` of the ``n`` classes present among the valid pixels
    are drawn uniformly without replacement, independently per sample, all samples at once
    (random keys ranked per sample: no loop, no synchronisation).

    Args:
        labels: ``(B, h, w)`` (or ``(B, x, y, z)``) int64 class map in ``[0, num_classes)`` (e.g. the
            teacher's argmax).
        num_classes: ``K``.
        valid: optional bool ``(B, h, w)`` mask; invalid pixels are neither counted nor pasted.
        generator: random source.

    Returns:
        ``(B, h, w)`` int64 pixel plan: 1 where the pixel's class was drawn (it is pasted from
        the second view), else 0.

    >>> labels = torch.tensor([[[0, 0, 3, 3]]])             # two classes present: one is drawn
    >>> int(classmix_masks(labels, 4, generator=torch.Generator().manual_seed(0)).sum())
    2
    """
    validate.tensor("labels", labels, ndim=(3, 4), volumes=True)
    validate.generator(generator)
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 class indices, got {labels.dtype} {validate.shape(labels)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if valid is not None:
        validate.tensor("valid", valid, ndim=(labels.dim(),))
        if valid.dtype != torch.bool or valid.shape != labels.shape or valid.device != labels.device:
            raise ValueError(f"valid must be a bool mask shaped like labels {validate.shape(labels)} on {labels.device}, "
                             f"got {valid.dtype} {validate.shape(valid)} on {valid.device}")
    B = labels.shape[0]
    flat = labels.flatten(1)
    keep = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.flatten(1)
    # uint8, not bool: CUDA has no bool scatter_reduce
    present = torch.zeros(B, num_classes, dtype=torch.uint8, device=labels.device)
    present = present.scatter_reduce_(1, flat.clamp(0, num_classes - 1), keep.byte(), reduce="amax").bool()
    # Rank present classes by a random key (absent ones last); the first ceil(n / 2) are drawn.
    keys = torch.where(present, _uniform((B, num_classes), labels.device, generator), 2.0)
    rank = keys.argsort(1).argsort(1)
    drawn = present & (rank < (present.sum(1, keepdim=True) + 1) // 2)
    pasted = drawn.byte().gather(1, flat.clamp(0, num_classes - 1)).bool() & keep
    return pasted.view_as(labels).long()
