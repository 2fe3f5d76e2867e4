"""Apply a recipe's diff hunks, exactly as printed in its markdown, to a source text."""

import re
from typing import List


def hunks(markdown: str) -> List[str]:
    """The ```diff blocks of a recipe, in order."""
    return re.findall(r"```diff\n(.*?)```", markdown, re.S)


def apply(source: str, hunk: str) -> str:
    """Replace the hunk's context and ``-`` lines, which must stand once, contiguous and with the
    same indentation, in ``source``, by its context and ``+`` lines. A line of white space only is
    a blank context line (trailing white space is not compared)."""
    old, new = [], []
    for line in hunk.splitlines():
        op, text = (" ", "") if not line.strip() else (line[0], line[1:])
        assert op in " +-", f"not a diff line: {line!r}"
        if op in " -":
            old.append(text)
        if op in " +":
            new.append(text)
    lines = source.splitlines()
    want = [s.rstrip() for s in old]
    at = [i for i in range(len(lines) - len(old) + 1) if [s.rstrip() for s in lines[i:i + len(old)]] == want]
    assert len(at) == 1, f"hunk found {len(at)} times (once expected):\n" + "\n".join(old)
    return "\n".join(lines[:at[0]] + new + lines[at[0] + len(old):]) + "\n"
