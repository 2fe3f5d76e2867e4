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
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from entropymix import CutMix, EntropyMix, MixPlan, relation_distillation  # noqa: E402
from entropymix import functional as F  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# --- measurement -------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MEASURE = {"memory": False}


def _memory_pass(argv) -> Optional[dict]:
    """Peak memory comes from a child process whose allocator returns large buffers to the OS on
    free (so peak RSS is peak memory); timings stay in this process, with the default allocator."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mem.json"
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        cmd = [sys.executable, __file__, *argv, "--memory-only", "--out", str(out)]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return None
        return json.loads(out.read_text())


def measure(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> Dict:
    if MEASURE["memory"]:
        fn()  # warm-up: lazy initialisation and compilation are not the function's memory
        return {"ms": None, "peak_mb": peak_mb(fn, device)}
    return {"ms": time_ms(fn, device, repeat, warmup), "peak_mb": None}


def time_ms(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def peak_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak extra memory of one call, in MiB (None where it cannot be read)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        return None
    base = _rss_kb("VmRSS:")
    fn()
    return max(0, _rss_kb("VmHWM:") - base) / 1024


# --- the mixing step ---------------------------------------------------------------------------

def unimatch_cutmix(box, x, x_mix, y, y_mix, c, c_mix, ig, ig_mix):
    """UniMatch's CutMix lines, verbatim: boolean-index assignment, image in place, the rest cloned."""
    x[box.unsqueeze(1).expand(x.shape) == 1] = x_mix[box.unsqueeze(1).expand(x.shape) == 1]
    y, c, ig = y.clone(), c.clone(), ig.clone()
    y[box == 1] = y_mix[box == 1]
    c[box == 1] = c_mix[box == 1]
    ig[box == 1] = ig_mix[box == 1]
    return x, y, c, ig


def bench_mix(device, B, H, K, V, dtype, repeat, grid=(4, 4)) -> List[Dict]:
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
            add(f"UniMatch CutMix, boolean index (p={p})",
                lambda: unimatch_cutmix(next(it), x0, xs[1], ys[0], ys[1], cs[0], cs[1], igs[0], igs[1]),
                "baseline: the same mixing work as EntropyMix" if p == 1.0 else "UniMatch's default p")
        from kornia.augmentation import RandomCutMixV2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kcut = RandomCutMixV2(p=1.0, use_correct_lambda=True).to(device)
        add("kornia RandomCutMixV2 (images only)", lambda: kcut(xs[0]))
        cut = CutMix()
        gen = torch.Generator().manual_seed(2)

        def ours_cutmix():
            _, plan = cut(xs[:2], generator=gen)
            return [plan.apply(q[:2]) for q in quads[1:]]
        add("entropymix.CutMix (4 tensors, p=0.5)", ours_cutmix)
    add("memory floor: clone x4", lambda: [q[0].clone() for q in quads])
    mixer = EntropyMix(grid, check_values=False)
    _, plan = mixer(xs, probs=probs)
    masks = F._view_masks(plan.index, V, (H, H))
    add("memory floor: torch.where x4 (same masks)", lambda: [F._mix(masks, q) for q in quads],
        "" if V == 2 else "baseline for V > 2")

    def apply4():
        fresh = MixPlan(plan.index, V, plan.size)  # a new plan each time: its masks are built, not cached
        return [fresh.apply(q) for q in quads]
    add("MixPlan.apply (4 tensors)", apply4)

    def full_call(m):
        def full():
            _, p = m(xs, probs=probs)
            return [p.apply(q) for q in quads[1:]]
        return full
    default, unchecked = full_call(EntropyMix(grid)), full_call(EntropyMix(grid, check_values=False))
    compiled = F._COMPILE["enabled"]
    if compiled:
        add("EntropyMix() as constructed: checks on, compiled (default)", default, "headline")
        add("EntropyMix(check_values=False), compiled", unchecked)
    F.set_compile(False)
    add("EntropyMix() checks on, eager entropy", default)
    add("EntropyMix(check_values=False), eager entropy", unchecked)
    F.set_compile(compiled)
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


# --- compilation: the cold first call and recompilations over shapes ----------------------------

def bench_compile(device, quick: bool) -> List[Dict]:
    """The first call after a fresh start (compilation included) next to the steady state, and
    the graphs compiled over a sweep of crops and batch sizes (the goal: one)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    F.set_compile(True)
    torch._dynamo.reset()
    counters.clear()
    F._COMPILED.clear()
    F._ANNOUNCED.clear()
    g = torch.Generator().manual_seed(0)
    B, H, K = (2, 65, 21) if quick else (8, 321, 21)
    views = [torch.rand(B, 3, H, H, generator=g).to(device) for _ in range(2)]
    probs = [(torch.randn(B, K, H, H, generator=g) * 3).softmax(1).to(device) for _ in range(2)]
    mixer = EntropyMix(4)
    _sync(device)
    t0 = time.perf_counter()
    mixer(views, probs=probs)
    _sync(device)
    first = (time.perf_counter() - t0) * 1e3
    steady = time_ms(lambda: mixer(views, probs=probs), device, 5, warmup=1)
    rows = [{"device": device.type, "what": f"first EntropyMix call, B={B}, {H}x{H}, K={K}, inductor's disk cache warm",
             "ms": first, "steady_ms": steady, "extra_s": (first - steady) / 1e3}]
    if device.type == "cpu":
        rows.append({"device": device.type, **_cold_start(B, H, K, steady)})
    sweep = [(8, 257, 257), (8, 321, 321), (8, 385, 417), (1, 321, 321), (5, 321, 321)]
    if quick:
        sweep = [(b, h // 4, w // 4) for b, h, w in sweep]
    for b, h, w in sweep:
        v = [torch.rand(b, 3, h, w, generator=g).to(device) for _ in range(2)]
        p = [torch.rand(b, K, h, w, generator=g).softmax(1).to(device) for _ in range(2)]
        mixer(v, probs=p)
    rows.append({"device": device.type, "what": "graphs compiled over crops 257^2, 321^2, 385x417 and batches 1, 5, 8"
                 + (" (quarter size)" if quick else ""), "graphs": counters["stats"]["unique_graphs"]})
    return rows


def _cold_start(B: int, H: int, K: int, steady: float) -> Dict:
    """The first call of a fresh process with an empty inductor cache: what a first run pays."""
    import subprocess
    import tempfile
    code = (f"import time, torch; from entropymix import EntropyMix; g = torch.Generator().manual_seed(0); "
            f"v = [torch.rand({B}, 3, {H}, {H}, generator=g) for _ in range(2)]; "
            f"p = [(torch.randn({B}, {K}, {H}, {H}, generator=g) * 3).softmax(1) for _ in range(2)]; "
            f"m = EntropyMix(4); t = time.perf_counter(); m(v, probs=p); print((time.perf_counter() - t) * 1e3)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, ENTROPYMIX_COMPILE="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    first = float(out.stdout.strip().splitlines()[-1])
    return {"what": f"first EntropyMix call of a new process, empty inductor cache, B={B}, {H}x{H}, K={K}",
            "ms": first, "steady_ms": steady, "extra_s": (first - steady) / 1e3}


# --- tables ------------------------------------------------------------------------------------

def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown_table(rows, columns) -> str:
    """``columns``: ``(header, right_aligned, cell(row) -> str)`` triples."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "|".join("---:" if right else "---" for _, right, _ in columns) + "|"]
    out += ["| " + " | ".join(cell(r) for _, _, cell in columns) + " |" for r in rows]
    return "\n".join(out)


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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 15, quick 3)")
    ap.add_argument("--sections", default="mix,compile,relation,step",
                    help="comma list of: mix, compile, relation, step")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile fast-path rows")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/speed-<dev>.json)")
    args = ap.parse_args(argv)
    MEASURE["memory"] = args.memory_only
    peaks = None if args.memory_only else _memory_pass(argv if argv is not None else sys.argv[1:])
    F.set_compile(not args.no_compile)
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    repeat = args.repeat or (3 if args.quick else 15)
    sections = set(args.sections.split(","))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
              "load": os.getloadavg(), "quick": args.quick, "mix": [], "compile": [], "relation": [], "step": []}
    for dev in devices:
        cuda = dev.type == "cuda"
        if "mix" in sections:
            if args.quick:
                configs = [(2, 65, 21, 2, torch.float32)]
            else:
                city = 801 if cuda else 513  # Cityscapes-like crops; scaled down on CPU
                configs = [(8, 321, 21, V, torch.float32) for V in (2, 4)] + [(4, city, 19, V, torch.float32) for V in (2, 4)]
                configs.append((8, 321, 21, 2, torch.bfloat16))
                if cuda:
                    configs.append((8, 321, 21, 2, torch.float16))
            for B, H, K, V, dtype in configs:
                result["mix"] += bench_mix(dev, B, H, K, V, dtype, repeat)
        if "relation" in sections:
            sides = [17] if args.quick else [33, 65, 129]
            B = 2 if args.quick else 8
            budget = (torch.cuda.mem_get_info()[0] / 2**30 * 0.8) if cuda else 8.0
            for side in sides:
                result["relation"] += bench_relation(dev, B, 256, side, max(1, repeat // 3), budget)
        if "compile" in sections and not args.memory_only and not args.no_compile:
            result["compile"] += bench_compile(dev, args.quick)
        if "step" in sections and not args.memory_only:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from step_overhead import bench_step  # needs the example model
            result["step"] += bench_step(dev, quick=args.quick, repeat=repeat)
    if args.memory_only:
        args.out.write_text(json.dumps(result))
        return result
    for section in ("mix", "relation", "step"):
        if peaks and len(peaks.get(section, [])) == len(result[section]):
            for row, mem in zip(result[section], peaks[section]):
                row["peak_mb"] = mem["peak_mb"]
    if result["mix"]:
        print("\n### EntropyMix vs alternatives (ratio: time / UniMatch boolean-index CutMix boxing every sample; for V=4, / the torch.where floor)\n")
        print(markdown_table(result["mix"], MIX_COLUMNS))
    if result["compile"]:
        print("\n### Compilation: cold first call and graphs over a shape sweep\n")
        for r in result["compile"]:
            print(f"- {r['device']}: {r['what']}: " + (f"{r['ms']:.0f} ms (steady state {r['steady_ms']:.1f} ms, "
                  f"+{r['extra_s']:.1f} s)" if "ms" in r else f"{r['graphs']}"))
    if result["relation"]:
        print("\n### Relation term, forward + backward: exact Gram form vs naive N x N form\n")
        print(markdown_table(result["relation"], RELATION_COLUMNS))
    if result["step"]:
        from step_overhead import STEP_COLUMNS  # noqa: E402
        print("\n### Overhead in one UniMatch training step of the example model\n")
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
