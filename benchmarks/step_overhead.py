"""What EntropyMix and SPEEDLoss add to one UniMatch training step of the example model.

Used by ``speed.py --sections step``. A step is the whole iteration of ``examples/train.py``
(teacher forward of the mixed-in batch, strong views, both mixes, forward, losses, backward,
optimizer step) on random data; the same step with CutMix and without SPEEDLoss is the baseline.
"""

from __future__ import annotations

import statistics
import sys
from argparse import Namespace
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from model import DeepLabV3Plus  # noqa: E402
from unimatch_loop import strong_augmentation, training_loss  # noqa: E402

from entropymix import CutMix, EntropyMix, SPEEDLoss  # noqa: E402


def bench_step(device: torch.device, quick: bool, repeat: int) -> List[Dict]:
    from speed import time_ms  # noqa: E402  (same timing rule as the other sections)

    configs = [(2, 32, 6)] if quick else [(8, 64, 6), (8, 321, 21)]
    rows = []
    for B, size, K in configs:
        g = torch.Generator().manual_seed(0)
        img_x, mask_x, img_u_w, ignore, img_m_w, ignore_m = (t.to(device) for t in (
            torch.rand(B, 3, size, size, generator=g), torch.randint(0, K, (B, size, size), generator=g),
            torch.rand(B, 3, size, size, generator=g), torch.zeros(B, size, size, dtype=torch.long),
            torch.rand(B, 3, size, size, generator=g), torch.zeros(B, size, size, dtype=torch.long)))
        batch = (img_x, mask_x, img_u_w, ignore, [(img_m_w, ignore_m)])
        model = DeepLabV3Plus(K).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        strong = strong_augmentation(size).to(device)
        args = Namespace(method="unimatch", conf_thresh=0.95, speed_weight=0.5)
        variants = {
            "UniMatch + CutMix": ((CutMix(), CutMix()), None),
            "UniMatch + EntropyMix": ((EntropyMix(4, check_values=False), EntropyMix(4, "sample", check_values=False)), None),
            "UniMatch + EntropyMix + SPEEDLoss": ((EntropyMix(4, check_values=False),
                                                   EntropyMix(4, "sample", check_values=False)),
                                                  SPEEDLoss(check_values=False)),
        }
        steps = {}
        for name, (mixers, speed) in variants.items():
            def step(mixers=mixers, speed=speed, gen=torch.Generator().manual_seed(0)):
                loss, _, _ = training_loss(model, batch, args, mixers, speed, strong, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            steps[name] = step
        # Variants take turns, so that drift of the machine's speed hits them alike.
        times = {name: [] for name in steps}
        for r in range(2 + max(3, repeat // 3)):
            for name, step in steps.items():
                t = time_ms(step, device, repeat=1, warmup=0)
                if r >= 2:  # the first two rounds are warm-up
                    times[name].append(t)
        base = statistics.median(times["UniMatch + CutMix"])
        for name, ts in times.items():
            ms = statistics.median(ts)
            rows.append({"device": device.type, "B": B, "size": size, "K": K, "variant": name, "ms": ms,
                         "overhead": (ms - base) / ms})
    return rows


STEP_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("batch", False, lambda r: f"{r['B']} x {r['size']}x{r['size']}, K={r['K']}"),
    ("variant", False, lambda r: r["variant"]),
    ("step ms", True, lambda r: f"{r['ms']:.1f}"),
    ("share of the step added", True, lambda r: f"{100 * r['overhead']:.1f}%"),
]
