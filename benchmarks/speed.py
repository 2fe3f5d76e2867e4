"""Speed and memory of EntropyMix, CutMix and SPEEDLoss next to the alternatives, in one process.

    python benchmarks/speed.py            # full run (CPU, and CUDA when present)
    python benchmarks/speed.py --quick    # smoke run, under a minute (CI)

Every figure in a table is measured in this process, side by side with its baseline: median
wall time of repeated runs after warm-up (CUDA synchronised), and peak extra memory of one run
(CUDA: ``max_memory_allocated``; CPU: peak RSS growth, reset through ``/proc/self/clear_refs``).
Prints markdown tables and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import MEASURE, fmt, machine, markdown_table, measure, memory_pass  # noqa: E402

from entropymix import CutMix, EntropyMix, MixPlan, relation_distillation  # noqa: E402
from entropymix import functional as F  # noqa: E402

# Row labels of the mixing table (the JSON's "method" field).
CUTMIX_ALL = "UniMatch CutMix, boolean index (p=1.0)"
CUTMIX_HALF = "UniMatch CutMix, boolean index (p=0.5)"
KORNIA = "kornia RandomCutMixV2 (images only)"
OURS_CUTMIX = "entropymix.CutMix (4 tensors, p=0.5)"
CLONE = "memory floor: clone x4"
READ = "read floor: probabilities read once (sum over K)"
WHERE = "memory floor: torch.where x4 (same masks)"
APPLY = "MixPlan.apply (4 tensors)"
DEFAULT = "EntropyMix() as constructed: checks on, eager (default)"
UNCHECKED = "EntropyMix(check_values=False), eager"
COMPILED = "EntropyMix() checks on, compiled (opt-in)"
COMPILED_UNCHECKED = "EntropyMix(check_values=False), compiled (opt-in)"

RESULTS = Path(__file__).resolve().parent / "results"


# --- the mixing step ---------------------------------------------------------------------------

def unimatch_cutmix(box, x, x_mix, y, y_mix, c, c_mix, ig, ig_mix):
    """UniMatch's CutMix lines, verbatim: boolean-index assignment, image in place, the rest cloned."""
    x[box.unsqueeze(1).expand(x.shape) == 1] = x_mix[box.unsqueeze(1).expand(x.shape) == 1]
    y, c, ig = y.clone(), c.clone(), ig.clone()
    y[box == 1] = y_mix[box == 1]
    c[box == 1] = c_mix[box == 1]
    ig[box == 1] = ig_mix[box == 1]
    return x, y, c, ig


def bench_mix(device, B, H, K, V, dtype, repeat, grid=(4, 4), compiled=True) -> List[Dict]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, **kw):
        return torch.rand(*shape, generator=g, **kw).to(device)

    xs = [rand(B, 3, H, H).to(dtype) for _ in range(V)]
    probs = [(torch.randn(B, K, H, H, generator=g) * 3).softmax(1).to(device=device, dtype=dtype) for _ in range(V)]
    ys = [p.argmax(1) for p in probs]
    cs = [p.amax(1) for p in probs]
    igs = [torch.zeros(B, H, H, dtype=torch.long, device=device) for _ in range(V)]
    quads = [xs, ys, cs, igs]
    rows: List[Dict] = []

    def add(name, fn, note=""):
        rows.append({"method": name, **measure(fn, device, repeat), "note": note})

    if V == 2:
        x0 = xs[0].clone()
        for p in (1.0, 0.5):
            # Cycle through fresh box draws: the cost of boolean indexing depends on the box area.
            boxes = [F.cutmix_boxes(B, (H, H), p, generator=torch.Generator().manual_seed(i)).to(device)
                     for i in range(8)]
            it = iter(boxes * 1000)
            add(CUTMIX_ALL if p == 1.0 else CUTMIX_HALF,
                lambda: unimatch_cutmix(next(it), x0, xs[1], ys[0], ys[1], cs[0], cs[1], igs[0], igs[1]),
                "baseline: the same mixing work as EntropyMix" if p == 1.0 else "UniMatch's default p")
        from kornia.augmentation import RandomCutMixV2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kcut = RandomCutMixV2(p=1.0, use_correct_lambda=True).to(device)
        add(KORNIA, lambda: kcut(xs[0]))
        cut = CutMix()
        gen = torch.Generator().manual_seed(2)

        def ours_cutmix():
            _, plan = cut(xs[:2], generator=gen)
            return [plan.apply(q[:2]) for q in quads[1:]]
        add(OURS_CUTMIX, ours_cutmix)
    add(CLONE, lambda: [q[0].clone() for q in quads])
    # What any exact entropy must pay: every probability map read once (a sum over classes, no log).
    add(READ, lambda: [q.sum(1) for q in probs])
    _, plan = EntropyMix(grid, check_values=False)(xs, probs=probs)
    masks = [plan.source_map((H, H)) == v for v in range(1, V)]

    def where4():
        out = []
        for q in quads:
            mixed = q[0]
            for mask, t in zip(masks, q[1:]):
                mixed = torch.where(mask[:, None] if t.dim() == 4 else mask, t, mixed)
            out.append(mixed)
        return out
    add(WHERE, where4, "" if V == 2 else "baseline for V > 2")

    def apply4():
        fresh = MixPlan(plan.index, V, plan.size)  # a new plan each time: its masks are built, not cached
        return [fresh.apply(q) for q in quads]
    add(APPLY, apply4)

    def full_call(m):
        def full():
            _, p = m(xs, probs=probs)
            return [p.apply(q) for q in quads[1:]]
        return full
    default, unchecked = full_call(EntropyMix(grid)), full_call(EntropyMix(grid, check_values=False))
    add(DEFAULT, default, "headline")
    add(UNCHECKED, unchecked)
    if compiled:
        previous = F.set_compile(True)
        try:
            add(COMPILED, default)
            add(COMPILED_UNCHECKED, unchecked)
        finally:
            F.set_compile(previous)
    # Ratio to UniMatch's CutMix where it applies (V = 2), else to the torch.where floor.
    base = next(r for r in rows if r["note"].startswith("baseline") or r["method"].startswith("memory floor: torch"))
    for r in rows:
        r["ratio"] = r["ms"] / base["ms"] if r["ms"] else None
        r.update(device=device.type, B=B, H=H, K=K, V=V, dtype=str(dtype).replace("torch.", ""))
    return rows


# --- the relation loss -------------------------------------------------------------------------

def bench_relation(device, B, D, side, repeat, mem_budget_gb) -> List[Dict]:
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(B, D, side, side, generator=g).to(device).requires_grad_()
    ft = torch.randn(B, D, side, side, generator=g).to(device)
    n = side * side
    rows = []
    for method in ("gram", "naive"):
        need_gb = 5 * B * n * n * 4 / 2**30 if method == "naive" else 0  # ~5 N x N float32 buffers
        row = {"method": method, "side": side, "N": n, "D": D, "B": B, "device": device.type}
        if need_gb > mem_budget_gb:
            row.update(ms=None, peak_mb=None, note=f"skipped: needs ~{need_gb:.0f} GiB")
        else:
            def step():
                fs.grad = None
                relation_distillation(fs, ft, method=method, check_values=False).backward()
            row.update(**measure(step, device, repeat, warmup=1), note="")
        rows.append(row)
    if rows[1]["ms"] and rows[0]["ms"]:
        rows[0]["speedup_vs_naive"] = rows[1]["ms"] / rows[0]["ms"]
    return rows


# --- volumes: a BCP step's tensors, and SPEEDLoss on V-Net features ---------------------------------

BCP_HAND = "BCP's hand-written cube (context_mask + blends, re-implemented)"
BCP_OURS = "entropymix.CutMix(p=1.0, share=2/3, shared=True) + plan replays"
CUTMIX_3D = "entropymix.CutMix(p=1.0): UniMatch statistics per axis + plan replays"
ENTROPYMIX_3D = "EntropyMix(grid=(4, 4, 4)) on the teacher's logits + plan replays"


def bcp_context_mask(img, mask_ratio, rng):
    """BCP's ``context_mask`` semantics (one cube of ``mask_ratio`` of every axis, shared by the batch,
    0 inside), written from its description here, with the bounds taken from the tensor."""
    B, _, X, Y, Z = img.shape
    loss_mask = torch.ones(B, X, Y, Z, device=img.device)
    mask = torch.ones(X, Y, Z, device=img.device)
    px, py, pz = int(X * mask_ratio), int(Y * mask_ratio), int(Z * mask_ratio)
    w, h, z = (int(rng.integers(0, n - p)) for n, p in ((X, px), (Y, py), (Z, pz)))
    mask[w:w + px, h:h + py, z:z + pz] = 0
    loss_mask[:, w:w + px, h:h + py, z:z + pz] = 0
    return mask.long(), loss_mask.long()


def bench_volume_mix(device, B, size, K, repeat) -> List[Dict]:
    """One copy-paste direction of a BCP step: two volumes ``(B, 1, X, Y, Z)``, their labels, the
    loss mask; EntropyMix also reads both views' teacher logits ``(B, K, X, Y, Z)``."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(B, 1, *size, generator=g).to(device) for _ in range(2)]
    logits = [torch.randn(B, K, *size, generator=g).to(device) for _ in range(2)]
    labs = [z.argmax(1) for z in logits]
    rng = np.random.default_rng(0)
    rows: List[Dict] = []

    def add(name, fn):
        rows.append({"method": name, **measure(fn, device, repeat)})

    def hand():
        img_mask, loss_mask = bcp_context_mask(xs[0], 2 / 3, rng)
        return xs[0] * img_mask + xs[1] * (1 - img_mask), labs[0] * img_mask + labs[1] * (1 - img_mask), loss_mask

    def ours(mixer, **kw):
        gen = torch.Generator().manual_seed(1)

        def run():
            mixed, plan = mixer(xs, generator=gen, **kw)
            return mixed, plan.apply(labs), (plan.source_map() == 0).long()
        return run
    add(BCP_HAND, hand)
    add(BCP_OURS, ours(CutMix(p=1.0, share=2 / 3, shared=True)))
    add(CUTMIX_3D, ours(CutMix(p=1.0)))
    add(ENTROPYMIX_3D, ours(EntropyMix((4, 4, 4), check_values=False), logits=logits))
    base = rows[0]["ms"]
    for r in rows:
        r.update(device=device.type, B=B, size=list(size), K=K, ratio=r["ms"] / base if r["ms"] and base else None)
    return rows


def bench_volume_relation(device, B, D, size, repeat) -> Dict:
    """SPEEDLoss's relation term, forward + backward, on ``(B, D, X, Y, Z)`` features (exact Gram
    form; the naive N x N form would need N^2 floats per image)."""
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(B, D, *size, generator=g).to(device).requires_grad_()
    ft = torch.randn(B, D, *size, generator=g).to(device)
    n = size[0] * size[1] * size[2]

    def step():
        fs.grad = None
        relation_distillation(fs, ft, method="gram", check_values=False).backward()
    return {"method": "relation (Gram form), fwd + bwd", "device": device.type, "B": B, "D": D, "size": list(size),
            "N": n, "naive_gib": B * n * n * 4 / 2**30, **measure(step, device, repeat, warmup=1)}


# --- the first call of a new process, and compilation over shapes ------------------------------

FIRST_CALL = (
    "import sys, time, torch; from entropymix import EntropyMix; from entropymix.functional import set_compile; "
    "set_compile(sys.argv[1] == 'compiled'); B, H, K = map(int, sys.argv[2:5]); g = torch.Generator().manual_seed(0); "
    "v = [torch.rand(B, 3, H, H, generator=g) for _ in range(2)]; "
    "p = [(torch.randn(B, K, H, H, generator=g) * 3).softmax(1) for _ in range(2)]; m = EntropyMix(4); "
    "t = time.perf_counter(); m(v, probs=p); first = time.perf_counter() - t; steady = []\n"
    "for _ in range(5):\n t = time.perf_counter(); m(v, probs=p); steady.append(time.perf_counter() - t)\n"
    "print(first * 1e3, sorted(steady)[2] * 1e3)")


def first_call(mode: str, B: int, H: int, K: int, compiler: bool) -> Dict:
    """The first ``EntropyMix()`` call of a new process with an empty inductor cache, beside the
    same process's steady state; ``compiler=False`` runs it with no C++ compiler on ``PATH``."""
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "ENTROPYMIX_COMPILE")}
        env.update(TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        if not compiler:
            env["PATH"] = cache  # an empty directory: no cc, c++ or g++
        out = subprocess.run([sys.executable, "-c", FIRST_CALL, mode, str(B), str(H), str(K)], env=env,
                             capture_output=True, text=True)
    first, steady = (float(x) for x in out.stdout.split()[-2:])
    what = (f"first {'default (eager)' if mode == 'eager' else 'compiled (opt-in)'} EntropyMix() call of a new process, "
            f"empty inductor cache, {'a' if compiler else 'no'} C++ compiler on PATH, B={B}, {H}x{H}, K={K}")
    return {"device": "cpu", "what": what, "mode": mode, "compiler": compiler, "ms": first, "steady_ms": steady,
            "extra_s": (first - steady) / 1e3}


def bench_compile(device, quick: bool, compiled: bool = True) -> List[Dict]:
    """First calls (default and opt-in compiled, with and without a compiler) and the graphs the
    opt-in kernel compiles over a sweep of crops and batch sizes (the goal: one)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    B, H, K = (2, 65, 21) if quick else (8, 321, 21)
    rows = []
    if device.type == "cpu":
        rows += [first_call("eager", B, H, K, True), first_call("eager", B, H, K, False)]
        if compiled and not quick:
            rows += [first_call("compiled", B, H, K, True), first_call("compiled", B, H, K, False)]
    if not compiled:
        return rows
    previous = F.set_compile(True)
    try:
        torch._dynamo.reset()
        counters.clear()
        g = torch.Generator().manual_seed(0)
        mixer = EntropyMix(4)
        sweep = [(8, 257, 257), (8, 321, 321), (8, 385, 417), (1, 321, 321), (5, 321, 321)]
        if quick:
            sweep = [(b, h // 4, w // 4) for b, h, w in sweep]
        for b, h, w in sweep:
            v = [torch.rand(b, 3, h, w, generator=g).to(device) for _ in range(2)]
            p = [torch.rand(b, K, h, w, generator=g).softmax(1).to(device) for _ in range(2)]
            mixer(v, probs=p)
        rows.append({"device": device.type, "what": "graphs the opt-in kernel compiled over crops 257^2, 321^2, 385x417 "
                     "and batches 1, 5, 8" + (" (quarter size)" if quick else ""),
                     "graphs": counters["stats"]["unique_graphs"]})
    finally:
        F.set_compile(previous)
    return rows


# --- tables ------------------------------------------------------------------------------------

MIX_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("B x HxW, K", False, lambda r: f"{r['B']} x {r['H']}x{r['H']}, {r['K']}"),
    ("V", False, lambda r: str(r["V"])),
    ("dtype", False, lambda r: r["dtype"]),
    ("method", False, lambda r: r["method"]),
    ("ms", True, lambda r: fmt(r["ms"])),
    ("x baseline", True, lambda r: fmt(r["ratio"])),
    ("peak MiB", True, lambda r: fmt(r["peak_mb"], ".1f")),
]
RELATION_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("B", False, lambda r: str(r["B"])),
    ("D", False, lambda r: str(r["D"])),
    ("features", False, lambda r: f"{r['side']}x{r['side']}"),
    ("N", False, lambda r: str(r["N"])),
    ("form", False, lambda r: r["method"]),
    ("fwd+bwd ms", True, lambda r: fmt(r["ms"])),
    ("speed-up", True, lambda r: fmt(r.get("speedup_vs_naive"), ".1f")),
    ("peak MiB", True, lambda r: fmt(r["peak_mb"], ".1f")),
    ("note", False, lambda r: r["note"]),
]


VOLUME_MIX_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("B x 1 x X x Y x Z, K", False, lambda r: f"{r['B']} x 1 x {' x '.join(map(str, r['size']))}, {r['K']}"),
    ("method", False, lambda r: r["method"]),
    ("ms", True, lambda r: fmt(r["ms"])),
    ("x BCP's", True, lambda r: fmt(r["ratio"])),
    ("peak MiB", True, lambda r: fmt(r["peak_mb"], ".0f")),
]
VOLUME_RELATION_COLUMNS = [
    ("device", False, lambda r: r["device"]),
    ("B", False, lambda r: str(r["B"])),
    ("D", False, lambda r: str(r["D"])),
    ("features", False, lambda r: " x ".join(map(str, r["size"]))),
    ("N voxels", True, lambda r: str(r["N"])),
    ("fwd+bwd ms", True, lambda r: fmt(r["ms"], ".0f")),
    ("peak MiB", True, lambda r: fmt(r["peak_mb"], ".0f")),
    ("naive N x N would need", True, lambda r: f"{r['naive_gib']:,.0f} GiB"),
]


# README labels for the headline table's rows.
README_ROWS = [
    (CUTMIX_ALL, "UniMatch CutMix, boolean index, every sample boxed"),
    (CUTMIX_HALF, "UniMatch CutMix, boolean index, p=0.5 (its training default)"),
    (KORNIA, "kornia `RandomCutMixV2` (images only)"),
    (OURS_CUTMIX, "`entropymix.CutMix` (4 tensors, p=0.5)"),
    (WHERE, "memory floor: `torch.where` x4 with the same masks"),
    (APPLY, "`MixPlan.apply` (4 tensors)"),
    (READ, "read floor: both probability maps read once (a sum over K)"),
    (DEFAULT, "**`EntropyMix()` as constructed (checks on, eager): the default**"),
    (UNCHECKED, "`EntropyMix(check_values=False)`, eager"),
    (COMPILED, "`EntropyMix()` checks on, compiled kernel (opt-in: `set_compile(True)`)"),
    (COMPILED_UNCHECKED, "`EntropyMix(check_values=False)`, compiled kernel (opt-in)"),
]


def _relation_rows(result: dict, device: str) -> List[str]:
    """The relation table's rows on ``device``: the Gram form beside the naive N x N form."""
    rel, lines = [r for r in result["relation"] if r["device"] == device], []
    for g in (r for r in rel if r["method"] == "gram"):
        n = next(r for r in rel if r["method"] == "naive" and r["side"] == g["side"])
        naive = f"{n['ms']:.1f}" if n["ms"] is not None else f"skipped ({n['note'].split('needs ')[-1]})"
        speed = f"{g['speedup_vs_naive']:.1f}x" if g.get("speedup_vs_naive") else "-"
        lines.append(f"| {g['side']} x {g['side']} | {g['N']} | {g['ms']:.1f} | {naive} | {speed} | "
                     f"{fmt(g['peak_mb'], '.0f')} / {fmt(n['peak_mb'], '.0f')} |")
    return lines


def report(result: dict) -> str:
    """The README's speed section, every number read from ``result`` (a saved full CPU run)."""
    def rows(B, H, V, dtype="float32"):
        return {r["method"]: r for r in result["mix"]
                if (r["B"], r["H"], r["V"], r["dtype"], r["device"]) == (B, H, V, dtype, "cpu")}

    head, v4, bf = rows(8, 321, 2), rows(8, 321, 4), rows(8, 321, 2, "bfloat16")
    city = next(r["H"] for r in result["mix"] if r["B"] == 4)
    c2 = rows(4, city, 2)
    repeat = result.get("repeat", 15)
    load, end = result["load"], result["load_end"]
    d, u, c = head[DEFAULT], head[UNCHECKED], head[COMPILED]
    lines = [
        f"Measured on the project's CI machine (2 cores of an AMD EPYC, torch's CPU kernels at "
        f"{result['machine'].get('cpu_capability', 'an unrecorded ISA')}, no GPU, torch "
        f"{result['machine']['torch'].split('+')[0]} CPU); load average {load[0]:.2f} when the timings started and "
        f"{end[0]:.2f} at the end (the benchmark itself holds both cores). Every ratio is taken against a baseline "
        f"measured in the same process; medians of {repeat} runs after warm-up; peak memory is the peak RSS growth of "
        "one call (measured in a child process whose allocator returns large buffers on free). Full tables: "
        "`benchmarks/results/speed-cpu.json`.",
        "",
        "Mixing the four tensors of a UniMatch step (images, pseudo-labels, confidences, ignore masks), B=8, "
        "3 x 321 x 321, K=21 probabilities at full resolution, V=2, 4 x 4 grid, float32:",
        "",
        "| method | ms | x UniMatch CutMix (every sample boxed) | peak MiB |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {head[m]['ms']:.2f} | {head[m]['ratio']:.2f} | {fmt(head[m]['peak_mb'], '.1f')} |"
              for m, label in README_ROWS if m in head]
    logs = 2 * 8 * 21 * 321 * 321 / 1e6
    lines += [
        "",
        f"On this CPU the default EntropyMix call (eager) is {d['ratio']:.2f}x UniMatch's CutMix step ({u['ratio']:.2f}x "
        f"with the value checks off); the opt-in compiled kernel brings it to {c['ratio']:.2f}x. Reading both "
        f"probability maps once, a sum over classes and nothing else, takes {head[READ]['ms']:.1f} ms "
        f"({head[READ]['ratio']:.2f}x): no exact entropy costs less than that read. The rest is one `log` per "
        f"probability (2 x 8 x 21 x 321 x 321 = {logs:.1f} M here) and the mixing, while CutMix only moves memory. "
        "Teacher probabilities at the model's output stride (1/4) are 16x fewer to read and log. With V=4 views the "
        f"default call takes {v4[DEFAULT]['ms']:.1f} ms ({v4[DEFAULT]['ratio']:.1f}x the `torch.where` floor of the four "
        f"tensors; {v4[COMPILED]['ms']:.1f} ms compiled). Cityscapes-like B=4 x {city} x {city}, K=19: CutMix step "
        f"{c2[CUTMIX_ALL]['ms']:.1f} ms, `MixPlan.apply` {c2[APPLY]['ms']:.1f} ms, EntropyMix {c2[DEFAULT]['ms']:.1f} ms "
        f"eager / {c2[COMPILED]['ms']:.1f} ms compiled (checks on). bfloat16 inputs: EntropyMix "
        f"{bf[DEFAULT]['ms']:.1f} ms ({bf[DEFAULT]['ratio']:.2f}x CutMix on the same bfloat16 tensors).",
    ]
    first = {(r["mode"], r["compiler"]): r for r in result["compile"] if "mode" in r}
    graphs = next((r["graphs"] for r in result["compile"] if "graphs" in r), None)
    if first:
        lines += ["", "First call of a new process with an empty inductor cache, B=8, 321 x 321, K=21, beside that "
                  "process's steady state: the default (eager) call pays "
                  f"+{first['eager', True]['extra_s']:.2f} s with a C++ compiler on `PATH` and "
                  f"+{first['eager', False]['extra_s']:.2f} s without one; the opt-in compiled kernel pays "
                  f"+{first['compiled', True]['extra_s']:.1f} s to compile (once per machine, kept in inductor's cache; "
                  "`warmup()` pays it before training) and, with no compiler, "
                  f"+{first['compiled', False]['extra_s']:.1f} s before it falls back to eager with one warning. "
                  f"Compiled, it made {graphs} graph(s) for crops 257², 321², 385 x 417 and batch sizes 1, 5 and 8."]
    lines += ["", "SPEEDLoss relation term, forward + backward, B=8, D=256:", "",
              "| features | N | exact Gram form ms | naive N x N ms | speed-up | peak MiB Gram / naive |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += _relation_rows(result, "cpu")
    vol = [r for r in result.get("volume", []) if r["device"] == "cpu"]
    if vol:
        mixing = [r for r in vol if "ratio" in r]
        size = " x ".join(map(str, mixing[0]["size"]))
        lines += ["", f"Volumes: one copy-paste direction of a BCP step (two views of B={mixing[0]['B']} x 1 x {size}, "
                  f"their labels and the loss mask; EntropyMix also reads both views' K={mixing[0]['K']} teacher "
                  "logits at full resolution), against BCP's hand-written masking (`context_mask` and the blends, "
                  "re-implemented from its semantics in `benchmarks/speed.py`):", "",
                  "| method | ms | x BCP's | peak MiB |", "|---|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['ms']:.1f} | {r['ratio']:.2f} | {fmt(r['peak_mb'], '.0f')} |" for r in mixing]
        lines += ["", "SPEEDLoss relation term on V-Net-like features, forward + backward (exact Gram form; the naive "
                  "`N x N` form is out of reach at these sizes):", "",
                  "| B | D | features | N voxels | ms | peak MiB | naive N x N would need |", "|---:|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['B']} | {r['D']} | {' x '.join(map(str, r['size']))} | {r['N']:,} | {r['ms']:.0f} | "
                  f"{fmt(r['peak_mb'], '.0f')} | {r['naive_gib']:,.0f} GiB |" for r in vol if "naive_gib" in r]
    from step_overhead import (MIX_COMPILED, MIX_CUTMIX, MIX_DEFAULT, MIX_FULL, MIX_HALF, SPEED, STEP, TEACHER,
                               TEACHER_HALF, WHOLE, WHOLE_HALF)
    step = {r["what"]: r for r in result["step"] if r["device"] == "cpu"}

    def cost(name):
        return f"{step[name]['ms']:.0f} ms, {100 * step[name]['share']:.1f}%"
    lines += ["", f"What users pay inside one UniMatch iteration of the example model (B=8, 321 x 321, K=21; forward, "
              f"backward, optimizer; median of {max(3, repeat // 3)}): the step takes {step[STEP]['ms'] / 1e3:.2f} s with "
              f"CutMix. Timed on that step's tensors, the two streams' EntropyMix calls with their plan replays take "
              f"{cost(MIX_DEFAULT)} of the step, by default (eager, on the teacher's logits at the output stride, as "
              f"the example passes them; {cost(MIX_COMPILED)}, compiled; {cost(MIX_FULL)}, on upsampled "
              f"full-resolution logits; CutMix's {cost(MIX_CUTMIX)}). EntropyMix compares the weak view's entropy "
              "with the mixed-in view's, so both come from the model in eval mode: the example adds the weak view to "
              f"UniMatch's teacher forward, which costs {cost(TEACHER)} more (the difference of the two forwards, "
              f"timed in turns). **EntropyMix's whole added cost: {cost(WHOLE)} of the step** (mixer calls, plan "
              "replays and that forward; UniMatch V2's EMA teacher predicts every view in one forward, so its recipe "
              "adds no forward). The opt-in `--entropy-scale 0.5` takes the entropies from one forward of the weak and "
              f"mixed-in views at half scale instead ({cost(TEACHER_HALF)}; the mixer on those smaller maps "
              f"{cost(MIX_HALF)}): **{cost(WHOLE_HALF)} of the step in all**, with UniMatch's pseudo-labels unchanged and "
              "the entropies comparable, but measured on smaller inputs, an approximation whose effect on accuracy "
              f"this project has not measured. SPEEDLoss forward and backward for both streams at the output stride: "
              f"{cost(SPEED)}."]
    return "\n".join(lines)


def cuda_report(result: dict, steps: dict, check: dict, first: Optional[Tuple[dict, dict, dict]] = None,
                rerun: str = "") -> str:
    """The README's GPU section, every number read from the GPU check's JSON: ``result`` (its
    ``speed-cuda.json``), ``steps`` (``step-cuda.json``) and ``check`` (``gpu-check-cuda.json``);
    ``first``: the same three of an earlier run (its failed tests, and the run-to-run spread of the
    timings); ``rerun``: the summary line of the CUDA tests run again after that run's failures."""
    gpu, torch_version = result["machine"].get("cuda", "a CUDA device"), result["machine"]["torch"]
    mix = [r for r in result["mix"] if r["device"] == "cuda"]
    size = max(r["H"] for r in mix if r["B"] == 8)
    head = {r["method"]: r for r in mix if (r["B"], r["H"], r["V"], r["dtype"]) == (8, size, 2, "float32")}
    v4 = {r["method"]: r for r in mix if (r["B"], r["H"], r["V"], r["dtype"]) == (8, size, 4, "float32")}
    half = {dt: {r["method"]: r for r in mix if (r["B"], r["H"], r["V"], r["dtype"]) == (8, size, 2, dt)}
            for dt in ("float16", "bfloat16")}
    K = next(iter(head.values()))["K"]
    lines = [
        f"The GPU check (`python benchmarks/gpu_check.py`) on one {gpu} (torch {torch_version}, {result['machine']['cpu_threads']} "
        f"CPU threads); load average {result['load'][0]:.2f} when the timings started and {result['load_end'][0]:.2f} at "
        f"the end. Medians of {result['repeat']} runs after warm-up, each timed between CUDA synchronisations; peak "
        "memory is `torch.cuda.max_memory_allocated` growth of one call. Full tables: "
        "`benchmarks/results/{speed,step,gpu-check}-cuda.json`.",
        "",
    ]
    tests = next((s for s in (first[2] if first else check)["steps"] if s["step"] == "tests"), None)
    if first and tests is not None and tests["status"] != "ok":
        lines += [f"The check's first run failed CUDA tests ({tests['tail'][-1]}; "
                  "`benchmarks/results/gpu-check-cuda-first-run.json`): ClassMix's `scatter_reduce` on a bool tensor, "
                  "which has no CUDA kernel, and `cutmix_boxes`' blocking host-to-device copy of the box dimensions "
                  "(caught by the `set_sync_debug_mode('error')` test), plus a test that gave CutMix three views. "
                  f"All three are fixed (CHANGELOG: Unreleased); the CUDA tests run again on the fixed code: {rerun} "
                  "(`benchmarks/results/gpu-tests-rerun-cuda.log`). The figures below are a second run of the check "
                  "on the fixed code (its tests step skipped, having just passed).", ""]

    def spread(rows_a, rows_b, key):
        a = {key(r): r["ms"] for r in rows_a if r.get("ms") and r["device"] == "cuda"}
        return max(abs(r["ms"] - a[key(r)]) / a[key(r)] for r in rows_b if r.get("ms") and key(r) in a)
    if first:
        from step_overhead import STEP, STEP_ENTROPYMIX, STEP_SPEED
        whole = (STEP, STEP_ENTROPYMIX, STEP_SPEED)
        mixing = spread(first[0]["mix"], result["mix"], lambda r: (r["method"], r["B"], r["H"], r["V"], r["dtype"]))
        stepping = spread([r for r in first[1]["step"] if r["what"] in whole],
                          [r for r in steps["step"] if r["what"] in whole], lambda r: r["what"])
        lines += [f"Between the two runs, a mixing time moved by up to {100 * mixing:.0f}% and a whole step's by up to "
                  f"{100 * stepping:.0f}% (`*-cuda-first-run.json`): timings of a few milliseconds on a GPU shift with kernel "
                  "launches and the host's load, and differences smaller than that are noise here.", ""]
    lines += [f"Mixing the four tensors of a UniMatch step, B=8, 3 x {size} x {size}, K={K} probabilities at full "
              "resolution, V=2, 4 x 4 grid, float32:", "",
              "| method | ms | x UniMatch CutMix (every sample boxed) | peak MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {head[m]['ms']:.2f} | {head[m]['ratio']:.2f} | {fmt(head[m]['peak_mb'], '.1f')} |"
              for m, label in README_ROWS if m in head]
    d, u = head[DEFAULT], head[UNCHECKED]
    lines += ["", f"On the GPU the value checks are most of the default call: {d['ms']:.2f} ms with them, "
              f"{u['ms']:.2f} ms without (`check_values=False`, {u['ratio']:.2f}x UniMatch's CutMix); they end in the "
              f"call's one host-device synchronisation. With V=4 views: {v4[DEFAULT]['ms']:.2f} ms by default, {v4[UNCHECKED]['ms']:.2f} ms "
              f"unchecked. Half-precision inputs (the default call): float16 {half['float16'][DEFAULT]['ms']:.2f} ms, "
              f"bfloat16 {half['bfloat16'][DEFAULT]['ms']:.2f} ms."]
    lines += ["", "SPEEDLoss relation term on the GPU, forward + backward, B=8, D=256:", "",
              "| features | N | exact Gram form ms | naive N x N ms | speed-up | peak MiB Gram / naive |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += _relation_rows(result, "cuda")
    vol = [r for r in result.get("volume", []) if r["device"] == "cuda" and "ratio" in r]
    if vol:
        lines += ["", f"Volumes on the GPU, one copy-paste direction of a BCP step (B={vol[0]['B']} x 1 x "
                  f"{' x '.join(map(str, vol[0]['size']))}), against BCP's hand-written masking:", "",
                  "| method | ms | x BCP's | peak MiB |", "|---|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['ms']:.2f} | {r['ratio']:.2f} | {fmt(r['peak_mb'], '.0f')} |" for r in vol]
        base = vol[0]["ms"]
        lines += ["", "Beyond BCP's blends: " + ", ".join(f"{r['method'].split(' + ')[0]} +{r['ms'] - base:.2f} ms"
                                                         for r in vol[1:]) + " per direction."]
    from step_overhead import MIX_COMPILED, MIX_CUTMIX, MIX_DEFAULT, SPEED, STEP, STEP_ENTROPYMIX, STEP_SPEED, TEACHER, WHOLE
    st = {r["what"]: r for r in steps["step"] if r["device"] == "cuda"}
    first = st[STEP]

    def cost(name):
        return f"{st[name]['ms']:.1f} ms, {100 * st[name]['share']:.1f}%"
    lines += ["", f"One UniMatch step of the example model at width {first['width']}, "
              f"B={first['B']}, {first['size']} x {first['size']}, K={first['K']}, float16 autocast with a GradScaler, "
              f"median of {steps['repeat']}, the variants interleaved (load average {steps['load'][0]:.2f} at the "
              f"start, {steps['load_end'][0]:.2f} at the end): with CutMix {first['ms']:.1f} ms; with EntropyMix "
              f"{st[STEP_ENTROPYMIX]['ms']:.1f} ms ({100 * (st[STEP_ENTROPYMIX]['share'] - 1):+.1f}%); with EntropyMix "
              f"and SPEEDLoss {st[STEP_SPEED]['ms']:.1f} ms ({100 * (st[STEP_SPEED]['share'] - 1):+.1f}%). Timed alone, "
              f"the parts: EntropyMix's two streams and plan replays {cost(MIX_DEFAULT)} ({cost(MIX_COMPILED)} compiled; "
              f"CutMix's {cost(MIX_CUTMIX)}), the extra eval-mode teacher forward {cost(TEACHER)}, together "
              f"{cost(WHOLE)}; SPEEDLoss forward and backward {cost(SPEED)}. These parts, timed alone, are not the "
              f"differences between whole steps ({st[STEP_ENTROPYMIX]['ms'] - first['ms']:.1f} ms for EntropyMix, "
              f"{st[STEP_SPEED]['ms'] - st[STEP_ENTROPYMIX]['ms']:.1f} ms more for SPEEDLoss): inside a step, "
              "asynchronous execution overlaps work around them. The whole steps are what a user pays."]
    return "\n".join(lines)


def cuda_report_from(folder: Path) -> str:
    """``cuda_report`` of the GPU check's files in ``folder`` (an earlier run's ``*-cuda-first-run.json``
    and the tests' rerun log, where present)."""
    def load(name):
        path = folder / name
        return json.loads(path.read_text()) if path.exists() else None
    first = [load(f"{n}-cuda-first-run.json") for n in ("speed", "step", "gpu-check")]
    log = folder / "gpu-tests-rerun-cuda.log"
    rerun = log.read_text().strip().splitlines()[-1].strip("= ") if log.exists() else ""
    return cuda_report(load("speed-cuda.json"), load("step-cuda.json"), load("gpu-check-cuda.json"),
                       tuple(first) if all(first) else None, rerun)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 15, quick 3)")
    ap.add_argument("--sections", default="mix,compile,relation,step,volume",
                    help="comma list of: mix, compile, relation, step, volume")
    ap.add_argument("--no-compile", action="store_true", help="skip the opt-in torch.compile rows")
    ap.add_argument("--size", type=int, default=321, help="crop of the headline configurations (GPU check: 513)")
    ap.add_argument("--step-width", type=int, default=32, help="width of the example model in the step section")
    ap.add_argument("--amp", action="store_true", help="step section under autocast (float16 + GradScaler on CUDA)")
    ap.add_argument("--step-variants", action="store_true",
                    help="also time whole steps with EntropyMix and with EntropyMix + SPEEDLoss (resolves on a GPU)")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/speed-<dev>.json)")
    ap.add_argument("--report", action="store_true", help="print the README section from the saved CPU JSON (with --device cuda: the GPU check's); measures nothing")
    args = ap.parse_args(argv)
    if args.report and args.device == "cuda":
        print(cuda_report_from(RESULTS))
        return {}
    if args.report:
        print(report(json.loads((args.out or RESULTS / "speed-cpu.json").read_text())))
        return {}
    MEASURE["memory"] = args.memory_only
    peaks = None if args.memory_only else memory_pass(__file__, argv if argv is not None else sys.argv[1:])
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    repeat = args.repeat or (3 if args.quick else 15)
    sections = set(args.sections.split(","))
    compiled = not args.no_compile
    result = {"machine": machine(), "load": os.getloadavg(), "quick": args.quick, "repeat": repeat,
              "mix": [], "compile": [], "relation": [], "step": [], "volume": []}
    for dev in devices:
        cuda = dev.type == "cuda"
        if "mix" in sections:
            H = args.size
            if args.quick:
                configs = [(2, 65, 21, 2, torch.float32)]
            else:
                city = 801 if cuda else 513  # Cityscapes-like crops; scaled down on CPU
                configs = [(8, H, 21, V, torch.float32) for V in (2, 4)] + [(4, city, 19, V, torch.float32) for V in (2, 4)]
                configs.append((8, H, 21, 2, torch.bfloat16))
                if cuda:
                    configs.append((8, H, 21, 2, torch.float16))
            for B, size, K, V, dtype in configs:
                result["mix"] += bench_mix(dev, B, size, K, V, dtype, repeat, compiled=compiled)
        if "relation" in sections:
            sides = [17] if args.quick else [33, 65, 129]
            B = 2 if args.quick else 8
            budget = (torch.cuda.mem_get_info()[0] / 2**30 * 0.8) if cuda else 8.0
            for side in sides:
                result["relation"] += bench_relation(dev, B, 256, side, max(1, repeat // 3), budget)
        if "volume" in sections:
            vsize, rsizes = ((24, 24, 16), [(2, 16, (24, 24, 16))]) if args.quick else (
                (112, 112, 80), [(B, 16, (112, 112, 80)) for B in (2, 4)] + [(B, 64, (28, 28, 20)) for B in (2, 4)])
            result["volume"] += bench_volume_mix(dev, 2 if args.quick else 8, vsize, 2, repeat)
            result["volume"] += [bench_volume_relation(dev, B, D, size, max(1, repeat // 3)) for B, D, size in rsizes]
        if "compile" in sections and not args.memory_only:
            result["compile"] += bench_compile(dev, args.quick, compiled)
        if "step" in sections and not args.memory_only:
            from step_overhead import bench_step  # needs the example model
            result["step"] += bench_step(dev, quick=args.quick, repeat=repeat, compiled=compiled, size=args.size,
                                         width=args.step_width, amp=args.amp, variants=args.step_variants)
    if args.memory_only:
        args.out.write_text(json.dumps(result))
        return result
    for section in ("mix", "relation", "step", "volume"):
        if peaks and len(peaks.get(section, [])) == len(result[section]):
            for row, mem in zip(result[section], peaks[section]):
                row["peak_mb"] = mem["peak_mb"]
    if result["mix"]:
        print("\n### EntropyMix vs alternatives (ratio: time / UniMatch boolean-index CutMix boxing every sample; "
              "for V=4, / the torch.where floor)\n")
        print(markdown_table(result["mix"], MIX_COLUMNS))
    if result["compile"]:
        print("\n### First calls and the opt-in kernel's graphs\n")
        for r in result["compile"]:
            print(f"- {r['device']}: {r['what']}: " + (f"{r['ms']:.0f} ms (steady state {r['steady_ms']:.1f} ms, "
                  f"+{r['extra_s']:.2f} s)" if "ms" in r else f"{r['graphs']}"))
    if result["relation"]:
        print("\n### Relation term, forward + backward: exact Gram form vs naive N x N form\n")
        print(markdown_table(result["relation"], RELATION_COLUMNS))
    if result["volume"]:
        print("\n### Volumes: one copy-paste direction of a BCP step, and the relation term on V-Net features\n")
        print(markdown_table([r for r in result["volume"] if "ratio" in r], VOLUME_MIX_COLUMNS))
        print()
        print(markdown_table([r for r in result["volume"] if "naive_gib" in r], VOLUME_RELATION_COLUMNS))
    if result["step"]:
        from step_overhead import STEP_COLUMNS
        print("\n### Share of one UniMatch training step of the example model\n")
        print(markdown_table(result["step"], STEP_COLUMNS))
    print(f"\nload average at the end (1, 5, 15 min): {os.getloadavg()}")
    result["load_end"] = os.getloadavg()
    tag = "+".join(d.type for d in devices) + ("-quick" if args.quick else "")
    out = args.out or RESULTS / f"speed-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
