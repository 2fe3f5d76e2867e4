"""FeatureTap: the features SPEEDLoss needs, from an unmodified model, by a forward hook."""

from __future__ import annotations

import difflib
from collections import deque
from typing import Any, Deque, Optional

from torch import nn

__all__ = ["FeatureTap"]


class FeatureTap:
    """Record the output of one named submodule on every forward of a model.

    SPEEDLoss distils decoder features, but most segmentation models return logits only. A tap
    reads the features where they are, so neither ``forward`` nor the training loop's model calls
    change:

    >>> tap = FeatureTap(model, "decoder.fuse")             # doctest: +SKIP
    >>> logits_w = model(img_u_w)                            # doctest: +SKIP
    >>> feats_w = tap.pop()                                  # the decoder output of that forward

    Every forward while the tap is open records one output, in order, so a step with several
    forwards (weak, strong, feature-perturbed) pops them in the order they ran. ``close()`` (or
    leaving a ``with FeatureTap(...)`` block) removes the hook and drops what was recorded.

    Args:
        model: the model, or a ``DistributedDataParallel`` / ``DataParallel`` wrapper of it.
        name: the submodule's dotted name as in ``model.named_modules()``; ``module.`` prefixes
            of wrappers are added or removed as needed, so the same name works wrapped or not.
        detach: store detached outputs (for teacher-only features). Default ``False``: the
            student's features must keep their graph.

    Raises:
        ValueError: no submodule of that name (the message lists the closest names).
    """

    def __init__(self, model: nn.Module, name: str, *, detach: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name, self.detach = name, bool(detach)
        self.module = _find(model, name)
        self._records: Deque[Any] = deque()
        self._handle: Optional[Any] = self.module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._records.append(output.detach() if self.detach and hasattr(output, "detach") else output)

    def __len__(self) -> int:
        """Outputs recorded and not popped yet."""
        return len(self._records)

    def pop(self) -> Any:
        """The oldest recorded output not popped yet (the module's output of that forward)."""
        if not self._records:
            state = "closed" if self._handle is None else "open"
            raise RuntimeError(f"FeatureTap({self.name!r}) has no recorded output to pop (tap {state}): "
                               "did the model run that submodule since the last pop()?")
        return self._records.popleft()

    def clear(self) -> None:
        """Drop every recorded output (and the graphs they hold)."""
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
        return f"FeatureTap({self.name!r}, {type(self.module).__name__}, recorded={len(self)})"


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
    # Names that end like the one asked for (the usual slip: a missing prefix), then look-alikes.
    leaf = name.rsplit(".", 1)[-1]
    close = [n for n in names if n.endswith("." + leaf) or n == leaf][:5]
    close += [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.5) if n not in close][:5 - len(close)]
    hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
    raise ValueError(f"model ({type(model).__name__}) has no submodule named {name!r}{hint}")
