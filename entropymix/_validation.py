"""The argument checks of the package, each written once with one wording.

Shape, dtype, device and scalar checks are free (no device synchronisation); they raise
``TypeError`` / ``ValueError`` naming the argument and showing what was received. The value
checks that read tensor data (and so synchronise) live beside the entropy pass in
``functional`` and the losses, and are optional.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Grid = Union[int, Tuple[int, ...]]

# Spatial dimensions a map may have: images (H, W) and volumes (X, Y, Z), no axis special.
SPATIAL = (2, 3)


def shape(t: Tensor) -> str:
    """``(2, 3, 4)``: a tensor's shape as the messages print it."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def layout(lead: str, spatial: int, small: bool = False) -> str:
    """How the messages write a layout: ``(B, C, H, W)`` for images, ``(B, C, X, Y, Z)`` for volumes
    (lower case for maps at their own resolution)."""
    axes = ("H, W" if spatial == 2 else "X, Y, Z")
    return f"({lead}, {axes.lower() if small else axes})"


def tensor(name: str, t: object, ndim: Optional[Sequence[int]] = None, floating: bool = False,
           volumes: bool = False) -> Tensor:
    """``t`` itself, once it is a tensor of one of the ``ndim`` ranks (and floating if asked);
    ``volumes``: the last rank of ``ndim`` is the volumetric form, named apart in the message."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() not in ndim:
        want = " or ".join(f"{n}-D" for n in (ndim[:-1] if volumes else ndim))
        extra = f" (or {ndim[-1]}-D for volumes)" if volumes else ""
        raise ValueError(f"{name} must be {want}, got shape {shape(t)}{extra}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} {shape(t)}")
    return t


def same_device(name: str, t: Tensor, device: torch.device, others: str = "the inputs are") -> None:
    """``t`` on ``device``, where ``others`` (``"views are"``, ``"probs[0] is"``) already are."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but {others} on {device}")


def dims(name: str, value: object, n: Optional[int] = None) -> Tuple[int, ...]:
    """Positive ints, one per spatial axis: an int is repeated ``n`` times (2 when ``n`` is None); a
    tuple must have ``n`` entries (2 or 3 when ``n`` is None)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * (n or 2)
    want = f"{n}" if n is not None else "2 or 3"
    if (not isinstance(value, (tuple, list)) or len(value) != (n or len(value)) or len(value) not in SPATIAL
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a tuple of {want} ints (one per spatial axis), got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{name} must be positive, got {tuple(value)}")
    return tuple(int(v) for v in value)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def probability(name: str, value: object) -> float:
    """A number in ``[0, 1]`` (``p`` of the mixers)."""
    if not (_number(value) and 0.0 <= value <= 1.0):  # type: ignore[operator]
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def positive(name: str, value: object) -> float:
    """A finite number ``> 0`` (temperatures)."""
    if not (_number(value) and value > 0):  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def non_negative(name: str, value: object) -> float:
    """A finite number ``>= 0`` (loss weights)."""
    if not (_number(value) and value >= 0):  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def generator(gen: object) -> Optional[torch.Generator]:
    if gen is not None and not isinstance(gen, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(gen).__name__} {gen!r}")
    return gen


def sequence(name: str, seq: object, length: Optional[int] = None, what: str = "tensors") -> Sequence:
    """A list or tuple (of ``length`` entries when given); a lone tensor is refused."""
    if isinstance(seq, Tensor) or not isinstance(seq, (list, tuple)):
        want = f"a list of {length} {what}" if length is not None else f"a list or tuple of {what}"
        raise TypeError(f"{name} must be {want}, got {type(seq).__name__}")
    if length is not None and len(seq) != length:
        raise ValueError(f"{name} must be a list of {length} {what} (one per view), got {len(seq)}")
    return seq


def views(seq: object, exactly: Optional[str] = None) -> Tuple[int, ...]:
    """``(B, C, *S)`` of V >= 2 views sharing shape, dtype and device, with 2 or 3 spatial dims
    ``S``; ``exactly``: the name of a two-view mixer, which takes 2 views and no more."""
    seq = sequence("views", seq, what="(B, C, H, W) or (B, C, X, Y, Z) tensors")
    if exactly is not None and len(seq) != 2:
        raise ValueError(f"{exactly} mixes exactly 2 views, got {len(seq)}")
    if len(seq) < 2:
        raise ValueError(f"views needs at least 2 tensors to mix, got {len(seq)}")
    first = tensor("views[0]", seq[0], ndim=(4, 5), volumes=True)
    for v, x in enumerate(seq):
        tensor(f"views[{v}]", x, ndim=(4, 5), volumes=True)
        if x.shape != first.shape:
            raise ValueError(f"views must share {layout('B, C', first.dim() - 2)}: views[0] is {shape(first)}, "
                             f"views[{v}] is {shape(x)}")
        if x.dtype != first.dtype or x.device != first.device:
            raise ValueError(f"views must share dtype and device: views[0] is {first.dtype} on {first.device}, "
                             f"views[{v}] is {x.dtype} on {x.device}")
    return tuple(first.shape)  # type: ignore[return-value]


def prediction(name: str, t: object, batch: Optional[int] = None, device: Optional[torch.device] = None,
               spatial: Optional[int] = None) -> Tensor:
    """A ``(B, K, *s)`` floating map of the teacher's predictions with ``K >= 1`` and 2 or 3 spatial
    dims (``spatial``, the views', when given), on the views' batch and device when those are given."""
    t = tensor(name, t, ndim=(4, 5) if spatial is None else (spatial + 2,), floating=True, volumes=spatial is None)
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]} but views have {batch}: {name} must be "
                         f"{layout('B, K', t.dim() - 2, small=True)} with B = {batch}, got {shape(t)}")
    if device is not None:
        same_device(name, t, device, "views are")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class, got shape {shape(t)}")
    return t


def maps(name: str, seq: object, num_views: int, batch: int, device: torch.device,
         spatial: Optional[int] = None) -> Sequence[Tensor]:
    """V teacher maps (:func:`prediction`) of one shape."""
    seq = sequence(name, seq, num_views)
    first = prediction(f"{name}[0]", seq[0], batch, device, spatial)
    for v, m in enumerate(seq):
        prediction(f"{name}[{v}]", m, batch, device, spatial)
        if m.shape != first.shape:
            raise ValueError(f"{name} must share one shape and device: {name}[0] is {shape(first)} on "
                             f"{first.device}, {name}[{v}] is {shape(m)} on {m.device}")
    return seq


def pick_maps(probs: object, logits: object, needed_by: Optional[str] = None) -> Tuple[object, str]:
    """The teacher's predictions and their kind (``"probs"`` or ``"logits"``): at most one of the
    two, and one when ``needed_by`` names the caller that needs them."""
    if probs is not None and logits is not None:
        raise ValueError("pass either probs= or logits=, not both")
    if needed_by is not None and probs is None and logits is None:
        raise ValueError(f"{needed_by} needs probs= or logits= (pass exactly one of probs= or logits=, "
                         "one tensor per view)")
    return (probs, "probs") if probs is not None else (logits, "logits")


def mask(name: str, valid: object, batch: Optional[int], device: Optional[torch.device], ignore_index: int,
         ndim: Optional[Sequence[int]] = (3, 4), others: str = "the inputs are") -> Tensor:
    """A bool mask from a bool mask or an integer label map (``ignore_index`` pixels are invalid),
    at the resolution it was given; ``batch`` and ``device``, when given, must match."""
    valid = tensor(name, valid, ndim=ndim, volumes=ndim is not None and len(ndim) == 2)
    if valid.is_floating_point() or valid.is_complex():
        raise TypeError(f"{name} must be a bool mask or an integer label map (ignore_index={ignore_index} "
                        f"is invalid), got dtype {valid.dtype} {shape(valid)}")
    if batch is not None and valid.shape[0] != batch:
        raise ValueError(f"{name} has batch size {valid.shape[0]} but the inputs have {batch}: {name} must be a "
                         f"{layout('B', valid.dim() - 1, small=True)} mask or label map with B = {batch}, "
                         f"got {shape(valid)}")
    if device is not None:
        same_device(name, valid, device, others)
    return valid if valid.dtype == torch.bool else valid != ignore_index


_WARNED: set = set()


def deprecated(what: str, removed_in: str, instead: str, stacklevel: int = 3) -> None:
    """Warn once per process, with ``FutureWarning`` (shown to users by default), that ``what`` goes
    away in version ``removed_in``; ``instead`` says what to write. Every public signature or
    behaviour that changes keeps its old form behind this for at least one minor version, with a
    CHANGELOG line under "Deprecated".

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     deprecated("EntropyMix(foo=...)", "0.4.0", "EntropyMix(bar=...)")
    ...     deprecated("EntropyMix(foo=...)", "0.4.0", "EntropyMix(bar=...)")  # once only
    >>> [str(w.message) for w in caught]
    ['EntropyMix(foo=...) is deprecated and will be removed in entropymix 0.4.0; use EntropyMix(bar=...) instead']
    """
    message = f"{what} is deprecated and will be removed in entropymix {removed_in}; use {instead} instead"
    if message in _WARNED:
        return
    _WARNED.add(message)
    warnings.warn(message, FutureWarning, stacklevel=stacklevel)
