"""A recipe's patch file, read and applied as ``git apply`` and ``patch -p1 -F0`` would: every
context and ``-`` line must stand, byte for byte and in one place, in the source."""

import re
import shutil
import subprocess
from typing import List, Tuple

import torch
from torch import nn

HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def patch_hunks(patch: str) -> List[str]:
    """The hunks of a one-file unified diff, each from its ``@@`` line on (text before the diff is
    the patch's description, which both tools skip)."""
    assert patch.count("\n--- a/") == 1 and patch.count("\n+++ b/") == 1, "one file per patch"
    return re.split(r"(?m)^(?=@@ )", patch[patch.index("\n@@ ") + 1:])[1:]


def markdown_hunks(markdown: str) -> List[str]:
    """The ```diff blocks of a recipe's Markdown, in order."""
    return re.findall(r"```diff\n(.*?)```", markdown, re.S)


def parse(hunk: str) -> Tuple[int, List[str], List[str], int, int]:
    """``(old_start, old_lines, new_lines, leading_context, trailing_context)`` of one hunk, after
    checking that its header counts its lines."""
    header, *body = hunk.rstrip("\n").split("\n")
    m = HEADER.match(header)
    assert m, f"not a hunk header: {header!r}"
    old, new = [], []
    for line in body:
        assert line[:1] in (" ", "-", "+"), f"not a diff line (a blank context line is one space): {line!r}"
        if line[0] in " -":
            old.append(line[1:])
        if line[0] in " +":
            new.append(line[1:])
    count = lambda g: 1 if g is None else int(g)  # noqa: E731
    assert (len(old), len(new)) == (count(m.group(2)), count(m.group(4))), f"line counts of {header} are off"
    ops = [line[0] for line in body]
    lead = next(i for i, op in enumerate(ops) if op != " ")
    trail = next(i for i, op in enumerate(reversed(ops)) if op != " ")
    return int(m.group(1)), old, new, lead, trail


def apply(source: str, patch: str) -> str:
    """``source`` with every hunk of ``patch`` applied, in order; fails unless each hunk's old lines
    stand exactly once in it. Hunks must have as much leading as trailing context: GNU ``patch``
    anchors a hunk with less of one to the start or end of the file."""
    lines = source.split("\n")
    for hunk in patch_hunks(patch):
        start, old, new, lead, trail = parse(hunk)
        assert lead == trail or (lead < trail and start == 1), f"uneven context ({lead} / {trail}):\n{hunk}"
        at = [i for i in range(len(lines) - len(old) + 1) if lines[i:i + len(old)] == old]
        assert len(at) == 1, f"hunk found {len(at)} times (once expected):\n{hunk}"
        lines[at[0]:at[0] + len(old)] = new
    return "\n".join(lines)


# --- what every recipe test does with its files ----------------------------------------------------

def check_files(markdown: str, patch: str, upstream: str, count: int) -> None:
    """The patch names the upstream commit it was made against, the Markdown names the commit and
    shows the patch's ``count`` hunks exactly."""
    assert upstream in patch and upstream.split(" at commit ")[1] in markdown
    assert markdown_hunks(markdown) == patch_hunks(patch) and len(patch_hunks(patch)) == count


def tools_accept(tmp_path, name: str, standin: str, patch: str) -> None:
    """``git apply --check`` and ``patch -p1 --dry-run -F0`` accept ``patch`` on the stand-in, saved
    as ``name`` (the file the patch names), with no fuzz."""
    (tmp_path / name).write_text(standin)
    (tmp_path / "recipe.patch").write_text(patch)
    for cmd in (["git", "apply", "--check", "recipe.patch"], ["patch", "-p1", "--dry-run", "-F0", "-i", "recipe.patch"]):
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        assert "FAILED" not in done.stdout and "fuzz" not in done.stdout


def have_tools() -> bool:
    return bool(shutil.which("git") and shutil.which("patch"))


def single_process_gpu_free(monkeypatch) -> None:
    """Upstream scripts wrap the model in DDP, move batches with ``.cuda()`` and call
    ``barrier()``: in one CPU process these become a stand-in wrapper and no-ops."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)


class FakeDDP(nn.Module):
    """What DistributedDataParallel looks like to a step (a ``module`` attribute), without a process group."""

    def __init__(self, module, *args, **kwargs):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
