"""The README's integration snippet runs as written (on a small model and random data)."""

import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from model import DeepLabV3Plus  # noqa: E402


def test_readme_unimatch_snippet_runs():
    snippet = re.search(r"## In a UniMatch loop.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippet, "README lost its integration snippet"
    g = torch.Generator().manual_seed(0)
    B, H = 2, 32
    env = {"torch": torch, "model": DeepLabV3Plus(5, width=8)}
    for name in ("img_u_w", "img_m_w", "img_u_s1", "img_m_s1"):
        env[name] = torch.rand(B, 3, H, H, generator=g)
    env["ignore_w"] = torch.zeros(B, H, H, dtype=torch.long)
    env["ignore_m"] = torch.full((B, H, H), 255, dtype=torch.long).index_fill_(2, torch.arange(8), 0)
    exec(snippet.group(1), env)
    loss = env["loss_u"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
