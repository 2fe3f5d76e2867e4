"""Functional layer: pure, batched tensor ops behind :class:`~entropymix.EntropyMix`,
:class:`~entropymix.CutMix` and :class:`~entropymix.MixPlan`.

The grid rule is used everywhere: pixel ``(y, x)`` of any ``(h, w)`` map
belongs to cell ``(floor(y * gh / h), floor(x * gw / w))``. A pixel plan is the same rule with
``(gh, gw) = (H, W)``, so one gather serves grid plans, pixel plans and every resolution.

Nothing here loops over samples or cells, and nothing synchronises with the device unless a
value check (``check_values=True``) asks for it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from typing import Callable, ContextManager, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "entropy",
    "entropy_from_logits",
    "patch_entropy",
    "select_views",
    "apply_plan",
    "source_map",
    "resize_nearest",
    "cutmix_boxes",
    "classmix_masks",
    "set_compile",
    "warmup",
    "SELECT_MODES",
]

SELECT_MODES = ("max", "min", "sample", "random")

Grid = Union[int, Tuple[int, int]]


# ----------------------------------------------------------------------------------------------
# The per-pixel entropy (the one bandwidth-heavy step): one pass over each probability map
# ----------------------------------------------------------------------------------------------

_COMPILE = {"enabled": os.environ.get("ENTROPYMIX_COMPILE", "1").lower() not in ("0", "false", "off")}
_COMPILED: dict = {}
_ANNOUNCED: set = set()


def set_compile(enabled: bool) -> None:
    """Turn the ``torch.compile`` fast path of the entropy (and its value checks) on or off.

    On by default; the environment variable ``ENTROPYMIX_COMPILE=0`` switches it off at import.
    The compiled kernel reads each probability (or logit) map once and yields the per-pixel
    entropy together with what the value checks need (row sum, minimum / maximum), never
    materialising ``p log p``. It is compiled once per device type, dtype and input kind, for
    every batch size, class count and crop (all four dims are dynamic); :func:`warmup` pays
    that ahead of training. If compilation fails, the eager path is used from then on with a
    single warning.
    """
    _COMPILE["enabled"] = bool(enabled)


def _float32_math(device: torch.device) -> ContextManager:
    """Autocast off for ``device``'s type while float32 math runs (a no-op outside autocast).

    Under ``torch.autocast`` matmuls run in float16/bfloat16; the cell sums, Gram matrices and
    KL reductions here must not (bfloat16 rounds pixel counts and cancels the Gram identity).
    """
    try:
        on = torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


def _probs_stats(probs: Tensor) -> Tuple[Tensor, Tensor]:
    """Entropy of ``(B, K, h, w)`` probabilities and the bool map of pixels that fail the value
    check: one fused pass (the entropy, row sum and row minimum share the loop over classes).

    The loop computes sum(where(p > 0, -p log p, 0)), which inductor vectorises (its lowering of
    entr() checks NaN element by element, and a second where() inside the loop costs 1.7x).
    entr()'s values for rows holding NaN or a negative entry are then set on the small per-pixel
    maps from the row sum and minimum, so the compiled and eager paths agree: NaN where a row
    has NaN, -inf where it has a negative entry.
    """
    p = probs.float()
    ent, total, low = torch.where(p > 0, -p * p.log(), 0.0).sum(1), p.sum(1), p.amin(1)
    ent = torch.where(torch.isnan(total), math.nan, torch.where(low < 0, -math.inf, ent))
    return ent, ~torch.isfinite(total) | (low < 0) | ((total - 1).abs() > SIMPLEX_TOLERANCE)


def _logits_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over dim 1."""
    logp = torch.log_softmax(logits.float(), dim=1)
    # -sum p log p, written so that p = 0 (logit -inf) contributes 0, not 0 * -inf = NaN.
    return torch.where(logp > -math.inf, -logp.exp() * logp, 0.0).sum(1)


def _logits_stats(logits: Tensor) -> Tuple[Tensor, Tensor]:
    """The entropy and the bool map of pixels with NaN, ``+inf`` or only ``-inf`` logits (the row
    maximum is not finite)."""
    return _logits_entropy(logits), ~torch.isfinite(logits.float().amax(1))


def _dynamic_shapes() -> Tuple[Callable[[Tensor, int], None], ContextManager]:
    """How every dim is made dynamic without specialising 1-sized dims or equal sizes: backed
    symbols with size-oblivious reasoning and no duck sizing where torch has them (inductor then
    fuses the reductions into one loop), unbacked symbols otherwise (one loop per reduction)."""
    from torch.fx.experimental import _config as fx_config
    if hasattr(fx_config, "backed_size_oblivious") and hasattr(fx_config, "use_duck_shape"):
        return torch._dynamo.mark_dynamic, fx_config.patch(backed_size_oblivious=True, use_duck_shape=False)
    return torch._dynamo.decorators.mark_unbacked, contextlib.nullcontext()


def _compiled_stats(kind: str, x: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """The fused stats through ``torch.compile``, or None when the fast path is off or failed."""
    if not _COMPILE["enabled"] or torch.compiler.is_compiling() or x.numel() == 0 or x.device.type == "meta":
        return None
    fn = _probs_stats if kind == "probs" else _logits_stats
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
    key = (kind, x.device.type, x.dtype)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"entropymix: compiling the fused entropy kernel for {kind} ({x.device.type}, "
              f"{str(x.dtype).replace('torch.', '')}); once per device type and dtype, for every shape. "
              "entropymix.functional.warmup() does it ahead of training; set_compile(False) skips it.",
              file=sys.stderr, flush=True)
    # Every dim dynamic and unspecialised (no 0/1 or duck-size guards): one compilation serves
    # every batch size, class count and crop. An alias carries the marks, not the caller's
    # tensor (detach(): no autograd needed here, and no _base whose sizes dynamo would guard).
    view = x.detach()
    mark, shapes = _dynamic_shapes()
    for d in range(4):
        mark(view, d)
    try:
        with shapes:
            return compiled(view)
    except Exception as err:  # a missing C++ compiler / triton must not break training
        _COMPILE["enabled"] = False
        warnings.warn(f"entropymix: torch.compile fast path disabled ({type(err).__name__}: {err}); "
                      "using eager entropy", RuntimeWarning, stacklevel=4)
        return None


# The eager path works through the batch in chunks of about this many elements: the same
# per-pixel sums bit for bit, without a (B, K, h, w) temporary (1.5x faster on CPU at B=8, 321^2).
EAGER_CHUNK = 1 << 22


def _eager_stats(kind: str, x: Tensor, check: bool, chunk: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Exact eager entropy (entr() / log_softmax) and, with ``check``, the failing-pixel map."""
    rows = max(1, (chunk or EAGER_CHUNK) // max(1, x[0].numel()))
    ents, bads = [], []
    for c in x.split(rows):
        ents.append(torch.special.entr(c.float()).sum(1) if kind == "probs" else _logits_entropy(c))
        if check:
            bads.append(_bad_probs(c) if kind == "probs" else _bad_logits(c))
    return torch.cat(ents), (torch.cat(bads) if check else None)


def _entropy_and_bad(kind: str, x: Tensor, check: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``(B, h, w)`` float32 entropy of a probability or logit map and, with ``check``, the bool
    map of pixels that fail the value check; one read of ``x`` on the compiled path."""
    with _float32_math(x.device):
        stats = _compiled_stats(kind, x)
        if stats is None:
            return _eager_stats(kind, x, check)
        return stats[0], (stats[1] if check else None)


def warmup(device: Union[str, torch.device] = "cpu", dtypes: Sequence[torch.dtype] = (torch.float32,),
           kinds: Sequence[str] = ("probs", "logits")) -> None:
    """Compile the fused entropy kernels now, so the first training step does not wait for them.

    One small call per kind and dtype compiles the kernel that then serves every shape. A no-op
    when the fast path is off (:func:`set_compile`).
    """
    device = torch.device(device)
    for kind in kinds:
        if kind not in ("probs", "logits"):
            raise ValueError(f"kinds must hold 'probs' and/or 'logits', got {kind!r}")
        for dtype in dtypes:
            x = torch.rand(2, 3, 5, 6, device=device).softmax(1).to(dtype)
            _compiled_stats(kind, x if kind == "probs" else x.log())


# ----------------------------------------------------------------------------------------------
# Validation helpers (shape checks are free; value checks synchronise and are optional)
# ----------------------------------------------------------------------------------------------

def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_tensor(name: str, t: object, ndim: Optional[Sequence[int]] = None, floating: bool = False) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{name} must be {want}, got shape {_shape(t)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _pair(name: str, value: Grid) -> Tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if value[0] < 1 or value[1] < 1:
        raise ValueError(f"{name} must be positive, got {tuple(value)}")
    return int(value[0]), int(value[1])


# Row sums of probabilities that went through float16/bfloat16 on their way here (a softmax
# under autocast, then .float()) are off by up to K half-ulps of bfloat16. The tolerance must
# cover that whatever dtype the tensor has now; unnormalised scores are still far outside it.
SIMPLEX_TOLERANCE = 2e-2


def _bad_probs(probs: Tensor) -> Tensor:
    """``(B, h, w)`` bool: pixels whose class vector is not a distribution (within the tolerance)."""
    total = probs.sum(1, dtype=torch.float32)  # non-finite if any entry is
    return ~torch.isfinite(total) | (probs < 0).any(1) | ((total - 1).abs() > SIMPLEX_TOLERANCE)


def _bad_logits(logits: Tensor) -> Tensor:
    """``(B, h, w)`` bool: NaN, ``+inf``, or every class ``-inf`` (``amax`` propagates NaN)."""
    return ~torch.isfinite(logits.amax(1))


def _raise_if_bad(kind: str, names: Sequence[str], maps: Sequence[Tensor], bads: Sequence[Tensor]) -> None:
    """Raise for the first map whose bool ``(B, h, w)`` map of failing pixels has one; a single
    synchronisation for all maps (the error path reads more, to say what is wrong)."""
    flags = torch.stack([b.any() for b in bads])
    if not bool(flags.any()):  # the one synchronisation
        return
    v = int(flags.int().argmax())
    name, m = names[v], maps[v]
    if kind == "logits":
        raise ValueError(f"{name} contains NaN or +inf, or a pixel whose logits are all -inf (shape {_shape(m)})")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains non-finite values (shape {_shape(m)})")
    raise ValueError(f"{name} must be probabilities: non-negative and summing to 1 over dim 1 "
                     f"within {SIMPLEX_TOLERANCE} (shape {_shape(m)}); pass logits= for unnormalised scores")


def _entropies(kind: str, names: Sequence[str], maps: Sequence[Tensor], masks: Sequence[Optional[Tensor]],
               check: bool) -> List[Tensor]:
    """Entropy maps of V probability / logit maps; with ``check``, the value checks of their valid
    pixels (``masks``, bool at each map's resolution, or None) with one synchronisation for all.
    What an ignored pixel holds is never read, so it is never rejected either."""
    ents, bads = [], []
    for m, mask in zip(maps, masks):
        ent, bad = _entropy_and_bad(kind, m, check)
        ents.append(ent)
        if check:
            bads.append(bad if mask is None else bad & mask)
    if check:
        _raise_if_bad(kind, names, maps, bads)
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
    """
    _check_tensor("probs", probs, ndim=(4,), floating=True)
    return _entropies("probs", ["probs"], [probs], [None], check_values)[0]


def entropy_from_logits(logits: Tensor, *, check_values: bool = True) -> Tensor:
    """Per-pixel entropy of ``softmax(logits, dim=1)``, stable for huge logits.

    Args:
        logits: ``(B, K, h, w)`` unnormalised scores, any floating dtype. ``-inf`` is allowed
            (a class with zero probability); ``+inf``, NaN and a pixel of only ``-inf`` are not.
        check_values: raise ``ValueError`` for those (synchronises).

    Returns:
        ``(B, h, w)`` float32 entropy in ``[0, log K]``.
    """
    _check_tensor("logits", logits, ndim=(4,), floating=True)
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


def resize_nearest(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Nearest resize of the last two dims by the grid rule: ``out[..., y, x] = x[..., floor(y * h / H), floor(x * w / W)]``.

    Works for any dtype (bool masks, labels); a no-op view when the size already matches.
    Unlike ``F.interpolate(mode="nearest")`` it is exactly the rule used by plans, so a mask
    resized here lines up with a plan applied at the same size.
    """
    h, w = x.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return x
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize an empty map of shape {_shape(x)}")
    x = x.index_select(-2, _cells(H, h, x.device))
    return x.index_select(-1, _cells(W, w, x.device))


def _as_mask(name: str, valid: object, ignore_index: int) -> Tensor:
    """A bool mask from a bool mask or an integer label map (``ignore_index`` pixels are invalid)."""
    _check_tensor(name, valid)
    if valid.dtype == torch.bool:
        return valid
    if valid.is_floating_point() or valid.is_complex():
        raise TypeError(f"{name} must be a bool mask or an integer label map (ignore_index={ignore_index} "
                        f"is invalid), got dtype {valid.dtype} {_shape(valid)}")
    return valid != ignore_index


def patch_entropy(entropy: Tensor, grid: Grid, valid: Optional[Tensor] = None, *, ignore_index: int = 255,
                  return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Mean entropy of each grid cell over its valid pixels.

    Args:
        entropy: ``(*, h, w)`` per-pixel entropy (e.g. from :func:`entropy`).
        grid: ``(gh, gw)`` cells, or an int for a square grid; at most ``(h, w)``.
        valid: optional ``(*, h', w')`` bool mask of pixels to count, or an integer label map
            whose ``ignore_index`` pixels are invalid; resized to ``(h, w)`` by the grid rule
            when its resolution differs. Values at invalid pixels (NaN included) never matter.
        ignore_index: the invalid label of an integer ``valid``.
        return_valid: also return the bool ``(*, gh, gw)`` map of cells with a valid pixel.

    Returns:
        ``(*, gh, gw)`` float32 mean entropy; a cell without valid pixels gets 0 (and ``False``
        in the returned cell mask, which :func:`select_views` uses so that it is never preferred).
        Computed in float32 under ``torch.autocast`` too (pixel counts stay exact).
    """
    _check_tensor("entropy", entropy, floating=True)
    if entropy.dim() < 2:
        raise ValueError(f"entropy must have at least 2 dims (*, h, w), got shape {_shape(entropy)}")
    gh, gw = _pair("grid", grid)
    h, w = entropy.shape[-2:]
    if gh > h or gw > w:
        raise ValueError(f"grid {(gh, gw)} is larger than the entropy map {(h, w)} (shape {_shape(entropy)})")
    mask = None
    if valid is not None:
        mask = _as_mask("valid", valid, ignore_index)
        if mask.shape[:-2] != entropy.shape[:-2] or mask.dim() != entropy.dim():
            raise ValueError(f"valid must have shape (*, h, w) with * = {tuple(entropy.shape[:-2])}, "
                             f"got {_shape(valid)} for entropy {_shape(entropy)}")
        if mask.device != entropy.device:
            raise ValueError(f"valid is on {mask.device} but entropy is on {entropy.device}")
        mask = resize_nearest(mask, (h, w))
    with _float32_math(entropy.device):
        # where, not a product: a NaN or inf at an invalid pixel must not reach its cell.
        ent = entropy.float() if mask is None else torch.where(mask, entropy.float(), 0.0)
        rows = _assignment(h, gh, entropy.device)            # (gh, h)
        cols = _assignment(w, gw, entropy.device).t()        # (w, gw)
        # Cell sums as two small matmuls: deterministic, batched, and no per-cell loop.
        sums = rows @ ent @ cols
        if mask is None:
            counts = rows.sum(1)[:, None] * cols.sum(0)[None, :]
            means = sums / counts
            nonempty = torch.ones_like(means, dtype=torch.bool)
        else:
            counts = rows @ mask.float() @ cols
            nonempty = counts > 0
            means = sums / counts.clamp_min(1)
    return (means, nonempty) if return_valid else means


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------

def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__} {generator!r}")


def _uniform(shape: Tuple[int, ...], device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    # Draw on the generator's device so a CPU generator gives the same plan on CPU and CUDA.
    _check_generator(generator)
    src = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=src).to(device, non_blocking=True)


def select_views(patch_entropy: Tensor, mode: str = "max", temperature: float = 1.0,
                 generator: Optional[torch.Generator] = None, *, valid: Optional[Tensor] = None) -> Tensor:
    """Choose a source view for every cell.

    Args:
        patch_entropy: ``(V, B, gh, gw)`` cell entropies of the V views.
        mode: ``"max"`` (most uncertain view), ``"min"``, ``"sample"`` (categorical with
            probabilities ``softmax(E / temperature)`` over views) or ``"random"`` (uniform,
            entropy and validity ignored: a grid-CutMix baseline).
        temperature: softmax temperature of ``"sample"``, > 0.
        generator: random source of ``"sample"`` / ``"random"``.
        valid: optional bool ``(V, B, gh, gw)`` cells that hold a valid pixel; an empty cell is
            never preferred over a non-empty one. Ties go to the lowest view index.

    Returns:
        ``(B, gh, gw)`` int64 view index.
    """
    _check_tensor("patch_entropy", patch_entropy, ndim=(4,), floating=True)
    if mode not in SELECT_MODES:
        raise ValueError(f"mode must be one of {SELECT_MODES}, got {mode!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    V = patch_entropy.shape[0]
    if V < 1:
        raise ValueError(f"patch_entropy needs at least one view, got shape {_shape(patch_entropy)}")
    ent = patch_entropy.float()
    if mode == "random":
        u = _uniform(ent.shape[1:], ent.device, generator)
        return (u * V).long().clamp_max_(V - 1)
    if valid is not None:
        if valid.shape != patch_entropy.shape or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor shaped like patch_entropy {_shape(patch_entropy)}, "
                             f"got {valid.dtype} {_shape(valid)}")
        # Where no view has a valid pixel, every view competes on entropy alone.
        valid = valid | ~valid.any(0, keepdim=True)
    if mode == "max":
        score = ent
    elif mode == "min":
        score = -ent
    else:  # "sample": Gumbel-max draws exactly from softmax(E / T), batched over cells.
        u = _uniform(ent.shape, ent.device, generator)
        gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))
        score = ent / temperature + gumbel
    if valid is not None:
        score = torch.where(valid, score, -math.inf)
    # torch.argmax returns the first maximal index: ties go to the lowest view.
    return score.argmax(0)


# ----------------------------------------------------------------------------------------------
# Applying a plan
# ----------------------------------------------------------------------------------------------

def source_map(index: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(B, h, w)`` source view of every pixel at resolution ``size`` for a ``(B, gh, gw)`` plan index."""
    _check_tensor("index", index, ndim=(3,))
    return resize_nearest(index, size)


def apply_plan(index: Tensor, tensors: Sequence[Tensor], *, num_views: Optional[int] = None) -> Tensor:
    """Compose one tensor from V by a plan: a pure gather, values are never interpolated.

    Pixel ``(y, x)`` of sample ``b`` is ``tensors[v][b, ..., y, x]`` with
    ``v = index[b, floor(y * gh / h), floor(x * gw / w)]``.

    Args:
        index: ``(B, gh, gw)`` int64 plan (a pixel plan is ``(B, H, W)``).
        tensors: V tensors of one shape ``(B, h, w)`` or ``(B, C, h, w)`` and one device, any
            resolution; ``index`` must be in ``[0, V)``.
        num_views: the plan's view count, to check ``len(tensors)`` against.

    Returns:
        A new tensor shaped like ``tensors[0]`` (and in its memory format for 4-D inputs). Its
        dtype is the promotion of the tensors' dtypes, as ``torch.where`` does
        (``torch.result_type``): bfloat16 and float32 confidences give float32, every value exact.
    """
    size = _check_plan_inputs(index, tensors, num_views)
    return _mix(_view_masks(index, len(tensors), size), tensors)


def _check_plan_inputs(index: Tensor, tensors: Sequence[Tensor], num_views: Optional[int]) -> Tuple[int, int]:
    _check_tensor("index", index, ndim=(3,))
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64, got {index.dtype}")
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    V = len(tensors)
    if num_views is not None and V != num_views:
        raise ValueError(f"the plan mixes {num_views} views but {V} tensors were given")
    if V < 1:
        raise ValueError("tensors is empty")
    first = _check_tensor("tensors[0]", tensors[0], ndim=(3, 4))
    for v, t in enumerate(tensors):
        _check_tensor(f"tensors[{v}]", t)
        if t.shape != first.shape or t.device != first.device:
            raise ValueError(f"tensors must share shape and device: tensors[0] is {_shape(first)} "
                             f"on {first.device}, tensors[{v}] is {_shape(t)} on {t.device}")
    if first.shape[0] != index.shape[0]:
        raise ValueError(f"batch size mismatch: index {_shape(index)} vs tensors {_shape(first)}")
    if index.device != first.device:
        raise ValueError(f"index is on {index.device} but tensors are on {first.device}")
    return first.shape[-2], first.shape[-1]


def _view_masks(index: Tensor, num_views: int, size: Tuple[int, int]) -> List[Tensor]:
    """Bool ``(B, h, w)`` pixel masks of views ``1 .. V-1``: compared at cell level, then resized."""
    return [resize_nearest(index == v, size) for v in range(1, num_views)]


def _mix(masks: Sequence[Tensor], tensors: Sequence[Tensor]) -> Tensor:
    out = tensors[0]
    for mask, t in zip(masks, tensors[1:]):
        # A (B, 1, h, w) mask broadcasts over channels, so the select never copies it; where()
        # promotes mixed dtypes step by step, which ends at the promotion of them all.
        out = torch.where(mask[:, None] if t.dim() == 4 else mask, t, out)
    return out.clone() if len(tensors) == 1 else out


# ----------------------------------------------------------------------------------------------
# CutMix boxes (UniMatch statistics, batched)
# ----------------------------------------------------------------------------------------------

_CUTMIX_TRIES = 128


def cutmix_boxes(batch_size: int, size: Tuple[int, int], p: float = 0.5, size_min: float = 0.02,
                 size_max: float = 0.4, ratio: Tuple[float, float] = (0.3, 1 / 0.3), *,
                 generator: Optional[torch.Generator] = None,
                 device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """One random box per sample with UniMatch's ``obtain_cutmix_box`` statistics, batched.

    With probability ``p`` a sample gets a box of area ``U(size_min, size_max) * H * W`` and
    aspect ``h / w = U(ratio)``, whose top-left corner is uniform among the positions where it
    fits. UniMatch draws aspect and position again until the box fits; here 128 candidates are
    drawn at once and the first that fits is kept, the same distribution (if none fits, which
    happens with probability below 1e-4 at the default sizes, the last aspect is kept and the
    box is shifted inside the image).

    Returns:
        ``(B, H, W)`` int64 pixel plan: 1 inside the box (taken from the second view), else 0.
    """
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    H, W = _pair("size", size)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if not 0.0 <= size_min <= size_max <= 1.0:
        raise ValueError(f"need 0 <= size_min <= size_max <= 1, got size_min={size_min!r}, size_max={size_max!r}")
    if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}")
    _check_generator(generator)
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    B, T = batch_size, _CUTMIX_TRIES
    u = _uniform((B, 2 + 3 * T), device, generator).double()
    mixed = u[:, 0] < p
    area = (size_min + (size_max - size_min) * u[:, 1:2]) * (H * W)            # (B, 1)
    r = ratio[0] + (ratio[1] - ratio[0]) * u[:, 2:2 + T]                        # (B, T)
    bw = torch.sqrt(area / r).floor()
    bh = torch.sqrt(area * r).floor()
    x0 = (u[:, 2 + T:2 + 2 * T] * W).floor()
    y0 = (u[:, 2 + 2 * T:] * H).floor()
    fits = (x0 + bw <= W) & (y0 + bh <= H)
    # First candidate that fits (argmax of a bool finds the first True); none fits -> the last.
    pick = torch.where(fits.any(1), fits.byte().argmax(1), T - 1)[:, None]
    bw, bh = bw.gather(1, pick).clamp(max=W), bh.gather(1, pick).clamp(max=H)
    x0 = torch.minimum(x0.gather(1, pick), W - bw)
    y0 = torch.minimum(y0.gather(1, pick), H - bh)
    ys = torch.arange(H, device=device, dtype=torch.float64)[None, :, None]
    xs = torch.arange(W, device=device, dtype=torch.float64)[None, None, :]
    inside = ((ys >= y0[:, :, None]) & (ys < (y0 + bh)[:, :, None])
              & (xs >= x0[:, :, None]) & (xs < (x0 + bw)[:, :, None]))
    return (inside & mixed[:, None, None]).long()


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
        labels: ``(B, h, w)`` int64 class map in ``[0, num_classes)`` (e.g. the teacher's argmax).
        num_classes: ``K``.
        valid: optional bool ``(B, h, w)`` mask; invalid pixels are neither counted nor pasted.
        generator: random source.

    Returns:
        ``(B, h, w)`` int64 pixel plan: 1 where the pixel's class was drawn (it is pasted from
        the second view), else 0.
    """
    _check_tensor("labels", labels, ndim=(3,))
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 class indices, got {labels.dtype} {_shape(labels)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if valid is not None:
        _check_tensor("valid", valid, ndim=(3,))
        if valid.dtype != torch.bool or valid.shape != labels.shape or valid.device != labels.device:
            raise ValueError(f"valid must be a bool mask shaped like labels {_shape(labels)} on {labels.device}, "
                             f"got {valid.dtype} {_shape(valid)} on {valid.device}")
    B = labels.shape[0]
    flat = labels.flatten(1)
    keep = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.flatten(1)
    present = torch.zeros(B, num_classes, dtype=torch.bool, device=labels.device)
    present.scatter_reduce_(1, flat.clamp(0, num_classes - 1), keep, reduce="amax")
    # Rank present classes by a random key (absent ones last); the first ceil(n / 2) are drawn.
    keys = torch.where(present, _uniform((B, num_classes), labels.device, generator), 2.0)
    rank = keys.argsort(1).argsort(1)
    drawn = present & (rank < (present.sum(1, keepdim=True) + 1) // 2)
    pasted = drawn.gather(1, flat.clamp(0, num_classes - 1)) & keep
    return pasted.view_as(labels).long()
