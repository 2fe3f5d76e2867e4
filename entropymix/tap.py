"""FeatureTap: the features SPEEDLoss needs, from an unmodified model, by a forward hook."""

from __future__ import annotations

import contextlib
import difflib
import weakref
from collections import deque
from typing import Any, Deque, Iterator, Optional

import torch
from torch import nn

__all__ = ["FeatureTap"]


class FeatureTap:
    """Record the output of one named submodule, for the forwards whose features you want.

    SPEEDLoss distils decoder features, but most segmentation models return logits only. A tap
    reads the features where they are, so neither ``forward`` nor the model calls change.

    What is recorded (safe by default, so that nothing piles up at full scale):

    - a forward with gradients enabled (a training forward: the student's features);
    - any forward inside ``with tap.recording():`` (the teacher's forwards, which run under
      ``torch.no_grad()``, in any mode);
    - nothing else: evaluation under ``torch.no_grad()`` / ``torch.inference_mode()`` records
      nothing, so a validation loop over a tapped model holds no memory.

    Records are popped in forward order. At most ``max_records`` wait to be popped; one more
    raises ``RuntimeError`` (a step that forgets to ``pop()`` or ``clear()`` fails at once
    rather than running out of memory later). ``close()`` (or leaving a ``with FeatureTap(...)``
    block) removes the hook and drops the records; ``clear()`` drops the records and keeps
    recording. The trade-off: a no-grad forward whose features you want must sit in
    ``recording()``.

    ``copy.deepcopy(model)`` (an EMA / mean teacher) gives a model that records nothing: the hook
    it inherits ignores every module but the tapped one and removes itself on its first call;
    tap the copy with its own ``FeatureTap`` if its features are wanted.

    Args:
        model: the model, or a ``DistributedDataParallel`` / ``DataParallel`` wrapper of it.
        name: the submodule's dotted name as in ``model.named_modules()``; ``module.`` prefixes
            of wrappers are added or removed as needed, so the same name works wrapped or not.
        detach: store detached outputs (for teacher-only features). Default ``False``: the
            student's features must keep their graph.
        max_records: how many records may wait to be popped.

    Raises:
        ValueError: no submodule of that name (the message lists the closest names, matching
            any dotted component: ``"fuse"`` finds ``"decode_head.linear_fuse"``).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> tap = FeatureTap(model, "1")                          # the ReLU's output
        >>> with torch.no_grad(), tap.recording():                # the teacher's forward
        ...     logits_w = model(torch.rand(2, 3, 16, 16))
        >>> feats_w = tap.pop()
        >>> logits_s = model(torch.rand(2, 3, 16, 16))            # the student's (grad enabled)
        >>> feats_s = tap.pop()
        >>> with torch.no_grad():                                 # evaluation: nothing is kept
        ...     _ = [model(torch.rand(1, 3, 16, 16)) for _ in range(100)]
        >>> len(tap), feats_w.shape, feats_s.requires_grad
        (0, torch.Size([2, 8, 14, 14]), True)
        >>> tap.close()
    """

    def __init__(self, model: nn.Module, name: str, *, detach: bool = False, max_records: int = 16) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be a positive int, got {max_records!r}")
        self.name, self.detach, self.max_records = name, bool(detach), max_records
        self.module = _find(model, name)
        self._records: Deque[Any] = deque()
        self._forced = 0  # depth of recording() blocks
        self._handle: Optional[Any] = self.module.register_forward_hook(_hook(self, self.module))

    def _record(self, output: Any) -> None:
        if not (self._forced or torch.is_grad_enabled()):
            return  # evaluation (no_grad / inference_mode) outside recording(): keep nothing
        if len(self._records) >= self.max_records:
            raise RuntimeError(f"FeatureTap({self.name!r}) holds {len(self._records)} records nobody popped "
                               f"(max_records={self.max_records}): pop() what each step uses, or clear() "
                               "at the start of each step")
        self._records.append(output.detach() if self.detach and hasattr(output, "detach") else output)

    @contextlib.contextmanager
    def recording(self) -> Iterator["FeatureTap"]:
        """Record every forward inside the block, gradients enabled or not (teacher forwards)."""
        self._forced += 1
        try:
            yield self
        finally:
            self._forced -= 1

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __len__(self) -> int:
        """Outputs recorded and not popped yet."""
        return len(self._records)

    def pop(self) -> Any:
        """The oldest recorded output not popped yet (the module's output of that forward)."""
        if not self._records:
            state = "closed" if self.closed else "open"
            raise RuntimeError(f"FeatureTap({self.name!r}) has no recorded output to pop (tap {state}): "
                               "did the model run that submodule since the last pop(), with gradients "
                               "enabled or inside tap.recording()?")
        return self._records.popleft()

    def clear(self) -> None:
        """Drop every recorded output (and the graphs they hold); the tap keeps recording."""
        self._records.clear()

    def close(self) -> None:
        """Remove the hook and drop the records; the model is as it was before the tap."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._records.clear()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"recorded={len(self)}"
        return f"FeatureTap({self.name!r}, {type(self.module).__name__}, {state})"


def _hook(tap: FeatureTap, module: nn.Module):
    """The forward hook, holding the tap and its module by weak reference.

    A function is copied by reference by ``copy.deepcopy``, and so are weak references: a deep
    copy of the model gets this same function, which sees a module that is not the tapped one,
    records nothing and removes itself. No hidden copy of the tap is ever made.
    """
    tap_ref, module_ref = weakref.ref(tap), weakref.ref(module)

    def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
        owner = tap_ref()
        if mod is not module_ref() or owner is None:  # a deep copy of the model, or a tap gone
            for key in [k for k, h in mod._forward_hooks.items() if h is hook]:
                del mod._forward_hooks[key]
            return
        owner._record(output)

    return hook


def _find(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    candidates = [name]
    if name.startswith("module."):
        candidates.append(name[len("module."):])                # a name from the wrapped model
    if isinstance(getattr(model, "module", None), nn.Module):
        candidates.append(f"module.{name}")                     # DDP / DataParallel wrapper
    for candidate in candidates:
        if candidate in modules and candidate != "":
            return modules[candidate]
    names = [n for n in modules if n]
    # Names with a dotted component like the asked-for leaf (a missing prefix, a longer leaf
    # name such as "linear_fuse" for "fuse"), then look-alikes of the whole name.
    leaf = name.rsplit(".", 1)[-1]
    close = [n for n in names if n.endswith("." + leaf) or n == leaf]
    close += [n for n in names if n not in close and leaf and leaf in n.rsplit(".", 1)[-1]]
    close = close[:5]
    close += [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.5) if n not in close][:5 - len(close)]
    hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
    raise ValueError(f"model ({type(model).__name__}) has no submodule named {name!r}{hint}")
