"""Hypothesis strategies shared by the tests."""

import math

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def sizes_and_grid(draw, max_side=40):
    """(H, W) and a grid no larger than it, ragged sizes included."""
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    gh = draw(st.integers(1, min(H, 8)))
    gw = draw(st.integers(1, min(W, 8)))
    return (H, W), (gh, gw)


def random_probs(gen, shape, dtype=torch.float32, sharpness=3.0):
    """Probabilities with per-pixel varying entropy (some near one-hot, some near uniform)."""
    B, K, h, w = shape
    scale = torch.rand(B, 1, h, w, generator=gen) * sharpness * 2
    logits = torch.randn(shape, generator=gen) * scale
    return logits.softmax(1).to(dtype)


def naive_cells(n, g):
    return [math.floor(y * g / n) for y in range(n)]
