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
    # What any exact entropy must pay: every probability map read once (a sum over classes, no log).
    add("read floor: probabilities read once (sum over K)", lambda: [q.sum(1) for q in probs])
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


# README labels for the headline table's rows (method names as saved in the JSON).
README_ROWS = [
    ("UniMatch CutMix, boolean index (p=1.0)", "UniMatch CutMix, boolean index, every sample boxed"),
    ("UniMatch CutMix, boolean index (p=0.5)", "UniMatch CutMix, boolean index, p=0.5 (its training default)"),
    ("kornia RandomCutMixV2 (images only)", "kornia `RandomCutMixV2` (images only)"),
    ("entropymix.CutMix (4 tensors, p=0.5)", "`entropymix.CutMix` (4 tensors, p=0.5)"),
    ("memory floor: torch.where x4 (same masks)", "memory floor: `torch.where` x4 with the same masks"),
    ("MixPlan.apply (4 tensors)", "`MixPlan.apply` (4 tensors)"),
    ("read floor: probabilities read once (sum over K)", "read floor: both probability maps read once (a sum over K)"),
    ("EntropyMix() as constructed: checks on, compiled (default)",
     "**`EntropyMix()` as constructed (checks on, compiled): the default**"),
    ("EntropyMix(check_values=False), compiled", "`EntropyMix(check_values=False)`, compiled"),
    ("EntropyMix() checks on, eager entropy", "`EntropyMix()` checks on, eager entropy"),
    ("EntropyMix(check_values=False), eager entropy", "`EntropyMix(check_values=False)`, eager entropy"),
]
DEFAULT = "EntropyMix() as constructed: checks on, compiled (default)"
UNCHECKED = "EntropyMix(check_values=False), compiled"
READ = "read floor: probabilities read once (sum over K)"


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
    d, u = head[DEFAULT], head[UNCHECKED]
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
        f"On this CPU the full EntropyMix call is {d['ratio']:.2f}x UniMatch's CutMix step ({u['ratio']:.2f}x with the "
        f"value checks off). Reading both probability maps once, a sum over classes and nothing else, takes "
        f"{head[READ]['ms']:.1f} ms ({head[READ]['ratio']:.2f}x): no exact entropy costs less than that read. The rest "
        f"is one `log` per probability (2 x 8 x 21 x 321 x 321 = {logs:.1f} M here) and the mixing, while CutMix only "
        f"moves memory. The value checks, read in the same pass, add {100 * (d['ms'] / u['ms'] - 1):.0f}% to the call. "
        "Teacher probabilities at the model's output stride (1/4) are 16x fewer to read and log. With V=4 views the "
        f"default call takes {v4[DEFAULT]['ms']:.1f} ms ({v4[DEFAULT]['ratio']:.1f}x the `torch.where` floor of the four "
        f"tensors; {v4[UNCHECKED]['ms']:.1f} ms with checks off), and reading the four probability maps once takes "
        f"{v4[READ]['ms']:.1f} ms ({v4[READ]['ratio']:.1f}x that floor) before any entropy is computed. Cityscapes-like B=4 x {city} x {city}, K=19: CutMix step "
        f"{c2['UniMatch CutMix, boolean index (p=1.0)']['ms']:.1f} ms, `MixPlan.apply` "
        f"{c2['MixPlan.apply (4 tensors)']['ms']:.1f} ms, EntropyMix {c2[DEFAULT]['ms']:.1f} ms compiled / "
        f"{c2['EntropyMix() checks on, eager entropy']['ms']:.1f} ms eager (checks on). bfloat16 inputs: EntropyMix "
        f"{bf[DEFAULT]['ms']:.1f} ms ({bf[DEFAULT]['ratio']:.2f}x CutMix on the same bfloat16 tensors).",
    ]
    comp = {("graphs" if "graphs" in r else "warm" if "warm" in r["what"] else "cold"): r for r in result["compile"]}
    if comp:
        lines += ["", f"Compilation: the fused kernel compiled {comp['graphs']['graphs']} graph(s) for crops 257², 321², "
                  "385 x 417 and batch sizes 1, 5 and 8. A new process with an empty inductor cache pays "
                  f"{comp['cold']['extra_s']:.1f} s on its first call (C++ compilation, once per machine, kept in "
                  "inductor's cache; `warmup()` pays it before training); with the cache warm, a fresh start pays "
                  f"{comp['warm']['extra_s']:.1f} s."]
    lines += ["", "SPEEDLoss relation term, forward + backward, B=8, D=256:", "",
              "| features | N | exact Gram form ms | naive N x N ms | speed-up | peak MiB Gram / naive |",
              "|---|---:|---:|---:|---:|---:|"]
    rel = [r for r in result["relation"] if r["device"] == "cpu"]
    for g in (r for r in rel if r["method"] == "gram"):
        n = next(r for r in rel if r["method"] == "naive" and r["side"] == g["side"])
        naive = f"{n['ms']:.1f}" if n["ms"] is not None else f"skipped ({n['note'].split('needs ')[-1]})"
        speed = f"{g['speedup_vs_naive']:.1f}x" if g.get("speedup_vs_naive") else "-"
        lines.append(f"| {g['side']} x {g['side']} | {g['N']} | {g['ms']:.1f} | {naive} | {speed} | "
                     f"{fmt(g['peak_mb'], '.0f')} / {fmt(n['peak_mb'], '.0f')} |")
    step = {(r["size"], r["variant"]): r for r in result["step"] if r["device"] == "cpu"}
    big = [step[321, v] for v in ("UniMatch + CutMix", "UniMatch + EntropyMix", "UniMatch + EntropyMix + SPEEDLoss")]
    small = [step[64, v]["ms"] for v in ("UniMatch + CutMix", "UniMatch + EntropyMix", "UniMatch + EntropyMix + SPEEDLoss")]
    share = 1 - big[1]["ms"] / big[2]["ms"]
    lines += ["", "One UniMatch iteration of the example model (forward, backward, optimizer; variants interleaved, "
              f"medians of {max(3, repeat // 3)}): at B=8, 321 x 321, K=21 it takes {big[0]['ms'] / 1e3:.2f} s with CutMix, "
              f"{big[1]['ms'] / 1e3:.2f} s with EntropyMix and {big[2]['ms'] / 1e3:.2f} s with EntropyMix + SPEEDLoss, so "
              f"SPEEDLoss (distilling at the output stride) is {100 * share:.1f}% of the step in this run "
              "(step times on this shared machine vary from run to run, so read it as an estimate). At B=8, 64 x 64 the "
              f"three take {small[0]:.0f}, {small[1]:.0f} and {small[2]:.0f} ms."]
    return "\n".join(lines)


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
    ap.add_argument("--report", action="store_true", help="print the README section from the saved CPU JSON; measures nothing")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads((args.out or RESULTS / "speed-cpu.json").read_text())))
        return {}
    MEASURE["memory"] = args.memory_only
    peaks = None if args.memory_only else _memory_pass(argv if argv is not None else sys.argv[1:])
    F.set_compile(not args.no_compile)
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    repeat = args.repeat or (3 if args.quick else 15)
    sections = set(args.sections.split(","))
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
              "load": os.getloadavg(), "quick": args.quick, "repeat": repeat, "mix": [], "compile": [], "relation": [], "step": []}
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
