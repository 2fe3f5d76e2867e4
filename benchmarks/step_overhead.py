"""What EntropyMix and SPEEDLoss cost inside one UniMatch training step of the example model.

Used by ``speed.py --sections step``. A step is the whole iteration of the example
(``examples/unimatch_loop.py``: teacher forwards, strong views, both mixes, forward, losses,
backward, optimizer step) on random data, with CutMix and without SPEEDLoss: the baseline. A
difference of two step medians cannot resolve a few percent on a shared CPU, so the components
are timed on their own, on the tensors of that step (the two streams' mixer calls with their
plan replays; SPEEDLoss forward and backward at the output stride), and reported as a share of
the step's median, measured in the same process.

EntropyMix compares the weak view's entropy with the mixed-in view's, so both must come from the
model in one mode: the example adds the weak view to UniMatch's eval-mode teacher forward (which
predicts the mixed-in batch alone with CutMix). That extra work is timed as the difference of the
two teacher forwards, taken in turns, and added to the mixer's calls for the whole cost.
"""

from __future__ import annotations

import statistics
import sys
from argparse import Namespace
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from measure import time_ms  # noqa: E402
from model import DeepLabV3Plus  # noqa: E402
from unimatch_loop import amp as amp_region, strong_augmentation, training_loss  # noqa: E402

from entropymix import CutMix, EntropyMix, SPEEDLoss  # noqa: E402
from entropymix.functional import set_compile  # noqa: E402

STEP = "UniMatch step (CutMix, no SPEEDLoss)"
STEP_ENTROPYMIX = "UniMatch step with EntropyMix"
STEP_SPEED = "UniMatch step with EntropyMix + SPEEDLoss"
MIX_DEFAULT = "EntropyMix, 2 streams + plan replays (default, eager)"
MIX_COMPILED = "EntropyMix, 2 streams + plan replays (compiled, opt-in)"
MIX_FULL = "EntropyMix on upsampled full-resolution logits, 2 streams + plan replays (eager)"
MIX_CUTMIX = "CutMix, 2 streams + plan replays"
SPEED = "SPEEDLoss forward + backward, 2 streams"
MIX_HALF = "EntropyMix on half-scale teacher logits (--entropy-scale 0.5), 2 streams + plan replays (eager)"
TEACHER = "Extra teacher forward: the weak view in eval mode, no gradients (EntropyMix's comparable entropies)"
WHOLE = "EntropyMix, whole added cost: 2 streams + plan replays + the extra teacher forward"
TEACHER_HALF = "Opt-in --entropy-scale 0.5: a teacher forward of the weak and mixed-in views at half scale"
WHOLE_HALF = "EntropyMix with --entropy-scale 0.5, whole added cost: 2 streams + plan replays + that forward"


def bench_step(device: torch.device, quick: bool, repeat: int, compiled: bool = True, size: int = 321,
               width: int = 32, amp: bool = False, variants: bool = False) -> List[Dict]:
    """Rows of the step and its components; ``variants`` also times whole steps with EntropyMix and
    with EntropyMix + SPEEDLoss (interleaved), which resolves on a GPU; ``amp``: autocast (float16
    with a GradScaler on CUDA, bfloat16 on CPU), as the example's ``--amp``."""
    configs = [(2, 32, 6)] if quick else [(8, size, 21)]
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    rows = []
    for B, size, K in configs:
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.rand(*shape, generator=g).to(device)
        img_x, img_u_w, img_m_w = rand(B, 3, size, size), rand(B, 3, size, size), rand(B, 3, size, size)
        mask_x = torch.randint(0, K, (B, size, size), generator=g).to(device)
        ignore = torch.zeros(B, size, size, dtype=torch.long, device=device)
        batch = (img_x, mask_x, img_u_w, ignore, [(img_m_w, ignore)])
        model = DeepLabV3Plus(K, width=width, feature_dim=max(64, 2 * width)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
        strong = strong_augmentation(size).to(device)
        args = Namespace(method="unimatch", conf_thresh=0.95, speed_weight=0.5)
        gen = torch.Generator().manual_seed(0)
        entropymix = (EntropyMix(4, check_values=False), EntropyMix(4, "sample", check_values=False))

        def step(mixers=(CutMix(), CutMix()), speed=None):
            with amp_region(device, amp_dtype, amp):
                loss, _, _ = training_loss(model, batch, args, mixers, speed, strong, gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        steps = {STEP: step}
        if variants:
            steps[STEP_ENTROPYMIX] = lambda: step(entropymix)
            steps[STEP_SPEED] = lambda: step(entropymix, SPEEDLoss(check_values=False))
        step_times = {name: [] for name in steps}
        for r in range(1 + max(3, repeat // 3)):  # variants take turns: drift hits them alike
            for name, fn in steps.items():
                t = time_ms(fn, device, repeat=1, warmup=0)
                if r:
                    step_times[name].append(t)
        step_ms = statistics.median(step_times[STEP])

        # The step's own tensors: teacher logits at full resolution (what the mixer reads), features
        # and logits at the output stride (what SPEEDLoss reads), the strong views.
        with torch.no_grad(), amp_region(device, amp_dtype, amp):
            model.eval()
            teacher = model(torch.cat([img_u_w, img_m_w]))
            model.train()
            logits = list(teacher.logits.chunk(2))
            feats = list(teacher.features.chunk(2))
            native = [model.classifier(f) for f in feats]
        conf_label = [z.softmax(1).max(1) for z in logits]
        views = [strong(img_u_w), strong(img_m_w)]

        def mix_call(mixers, teacher_logits):
            @amp_region(device, amp_dtype, amp)
            def run():
                for m in mixers:
                    mixed, plan = m(views, logits=teacher_logits, valid=[ignore, ignore], generator=gen)
                    for t in ([c for c, _ in conf_label], [y for _, y in conf_label], [ignore, ignore], native, feats):
                        plan.apply(t)
            return run
        student_feats = feats[0].clone().requires_grad_()
        student_logits = native[0].clone().requires_grad_()
        crit = SPEEDLoss(check_values=False)

        @amp_region(device, amp_dtype, amp)
        def speed_call():
            for _ in range(2):
                crit(student_logits, native[1], student_feats, feats[1], valid=ignore).backward()

        # As the example passes them: EntropyMix reads the teacher's logits at the output stride.
        comps = {MIX_CUTMIX: mix_call((CutMix(), CutMix()), logits),
                 MIX_DEFAULT: mix_call(entropymix, native),
                 MIX_FULL: mix_call(entropymix, logits),
                 SPEED: speed_call}
        times = {name: time_ms(fn, device, repeat=repeat, warmup=2) for name, fn in comps.items()}

        def teacher(images):  # the example's eval-mode teacher forward, with what the mixer reads
            @torch.no_grad()
            @amp_region(device, amp_dtype, amp)
            def run():
                model.eval()
                out = model(torch.cat(images))
                model.classifier(out.features)
                model.train()
            return run
        both, alone = teacher([img_u_w, img_m_w]), teacher([img_m_w])
        extra = []
        for r in range(repeat + 1):  # in turns, so that drift hits both alike; the first pair warms up
            t_both, t_alone = time_ms(both, device, repeat=1, warmup=0), time_ms(alone, device, repeat=1, warmup=0)
            if r:
                extra.append(t_both - t_alone)
        times[TEACHER] = statistics.median(extra)

        @torch.no_grad()
        @amp_region(device, amp_dtype, amp)
        def half_scale():  # what --entropy-scale 0.5 adds instead: all views, downscaled, in eval mode
            model.eval()
            small = torch.nn.functional.interpolate(torch.cat([img_u_w, img_m_w]), scale_factor=0.5, mode="bilinear",
                                                    align_corners=False)
            model.classifier(model(small).features)
            model.train()
        times[TEACHER_HALF] = time_ms(half_scale, device, repeat=repeat, warmup=1)
        with torch.no_grad(), amp_region(device, amp_dtype, amp):
            model.eval()
            small = torch.nn.functional.interpolate(torch.cat([img_u_w, img_m_w]), scale_factor=0.5, mode="bilinear",
                                                    align_corners=False)
            native_half = list(model.classifier(model(small).features).chunk(2))
            model.train()
        times[MIX_HALF] = time_ms(mix_call(entropymix, native_half), device, repeat=repeat, warmup=2)
        if compiled:
            previous = set_compile(True)
            try:
                times[MIX_COMPILED] = time_ms(comps[MIX_DEFAULT], device, repeat=repeat, warmup=2)
            finally:
                set_compile(previous)
        common = {"device": device.type, "B": B, "size": size, "K": K, "width": width, "amp": amp}
        rows += [{**common, "what": name, "ms": statistics.median(ts), "share": statistics.median(ts) / step_ms}
                 for name, ts in step_times.items()]
        rows += [{**common, "what": name, "ms": ms, "share": ms / step_ms} for name, ms in times.items()]
        for name, parts in ((WHOLE, (MIX_DEFAULT, TEACHER)), (WHOLE_HALF, (MIX_HALF, TEACHER_HALF))):
            whole = sum(times[p] for p in parts)
            rows.append({**common, "what": name, "ms": whole, "share": whole / step_ms})
    return rows


STEP_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("batch", False, lambda r: f"{r['B']} x {r['size']}x{r['size']}, K={r['K']}"),
    ("what", False, lambda r: r["what"]),
    ("ms", True, lambda r: f"{r['ms']:.1f}"),
    ("share of the step", True, lambda r: f"{100 * r['share']:.1f}%"),
]
