"""The GPU check: one command, prepared before a GPU is lent, whose output is the whole answer.

    python benchmarks/gpu_check.py                 # on a CUDA machine, about 6 minutes on one H100/H200
    python benchmarks/gpu_check.py --device cpu    # its CPU-compatible parts in about a minute (CI runs it)

Steps, each timed, each allowed to fail without stopping the others (the summary says which did):

1. ``tests``: the CUDA variants of every device-capable test (pytest ``-k cuda``; on CPU, their
   collection only: the suite runs the ``cpu`` variants).
2. ``speed``: ``benchmarks/speed.py`` at B=8, 3 x 513 x 513, K=21, and the volumes section (a BCP
   step's tensors, B=8 x 1 x 112 x 112 x 80; SPEEDLoss on V-Net-sized features) (EntropyMix vs UniMatch's
   CutMix vs kornia vs the read and ``torch.where`` floors, float32 / float16 / bfloat16), and the
   relation term, written to ``speed-<device>.json``.
3. ``step``: one UniMatch step of a DeepLabV3+-sized example model (width 128) at B=8,
   513 x 513, float16 autocast with a GradScaler: UniMatch + CutMix vs + EntropyMix vs +
   EntropyMix + SPEEDLoss (interleaved), and the components' own times, to ``step-<device>.json``.
4. ``train``: a few iterations of ``examples/train.py --amp`` on the device, then the same under
   ``torchrun`` (nccl on CUDA, gloo on CPU), one process; then a few iterations of the volumetric
   example ``examples/train_volumes.py``.

Everything lands in ``--out`` (default ``benchmarks/results``): ``*-cuda.json`` on a GPU and
``gpu-check-<device>.json``, the summary, printed at the end as well.

A lent GPU machine that has torch but not kornia (the kornia row and the example need it) gets
its wheels carried in an ignored folder, fetched here first (one line each)::

    echo /.whl/ >> .git/info/exclude
    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl kornia kornia_rs

and there, with ``.whl`` carried::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, cmd, log_dir: Path, timeout: int, env=None) -> dict:
    """Run one step, its output teed to ``<log_dir>/<name>.log``; never raises."""
    t0 = time.time()
    log = log_dir / f"{name}.log"
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        log.write_text(proc.stdout + proc.stderr)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired as err:
        log.write_text(f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout} s")
        status, tail = f"timed out after {timeout} s", []
    seconds = time.time() - t0
    print(f"[{status:>8}] {name} ({seconds:.0f} s): {' | '.join(tail)[-300:]}", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "log": str(log), "tail": tail}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the JSON and logs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "speed", "step", "train"])
    args = ap.parse_args(argv)
    import torch  # after parsing: --help answers at once

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check.py: no CUDA device here; pass --device cpu for the CPU smoke run")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "PYTHONUNBUFFERED": "1"}
    steps = []
    limit = 240 if cuda else 600  # seconds a step may take; on a CPU only a guard against a hang
    tag = args.device if cuda else f"{args.device}-quick"  # the JSON names: speed-cuda.json, speed-cpu-quick.json
    if "tests" not in args.skip:
        # on a CPU the suite has just run these tests' cpu variants: collecting the cuda ones checks
        # what a GPU run would select (pytest exits 5, a failed step, when the selection is empty)
        steps.append(run("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                                   *([] if cuda else ["--collect-only"]), "tests/test_mix.py", "tests/test_loss.py",
                                   "tests/test_functional.py", "tests/test_tap.py", "tests/test_compile.py"],
                         out, limit, env))
    if "speed" not in args.skip:
        steps.append(run("speed", [py, "benchmarks/speed.py", "--device", args.device, "--sections", "mix,relation,volume",
                                   "--size", "513", *(["--repeat", "15"] if cuda else ["--quick", "--no-compile"]),
                                   "--out", str(out / f"speed-{tag}.json")],
                         out, limit, env))
    if "step" not in args.skip:
        # on a CPU the full-size step takes 40-100 s or more (bfloat16 without native support): the CPU
        # mode checks that the step runs, at a size a 2-core machine does in seconds
        size = ["--size", "513", "--step-width", "128", "--repeat", "9"] if cuda else [
            "--size", "129", "--step-width", "32", "--quick", "--no-compile"]
        cmd = [py, "benchmarks/speed.py", "--device", args.device, "--sections", "step", "--amp", "--step-variants", *size,
               "--out", str(out / f"step-{tag}.json")]
        steps.append(run("step", cmd, out, limit, env))
    if "train" not in args.skip:
        tiny = ["--num-labeled", "8", "--num-unlabeled", "32", "--num-val", "10", "--batch-size", "4", "--epochs", "1",
                "--iters-per-epoch", "3", "--no-progress", "--overwrite", "--amp"]
        if not cuda:
            tiny += ["--crop-size", "32", "--width", "8"]
        steps.append(run("train", [py, "examples/train.py", *tiny, "--out-dir", str(out / "gpu-check-run")],
                         out, 180, {**env, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
                         if cuda else {**env, "CUDA_VISIBLE_DEVICES": ""}))
        steps.append(run("train-torchrun", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                            "examples/train.py", *tiny, "--out-dir", str(out / "gpu-check-ddp")],
                         out, 180, env if cuda else {**env, "CUDA_VISIBLE_DEVICES": ""}))
        vol = ["--num-labeled", "4", "--num-unlabeled", "16", "--num-val", "4", "--pretrain-epochs", "1", "--epochs", "1",
               "--iters-per-epoch", "3", "--no-progress", "--overwrite"] + ([] if cuda else ["--size", "16", "16", "12"])
        steps.append(run("train-volumes", [py, "examples/train_volumes.py", *vol, "--out-dir", str(out / "gpu-check-volumes")],
                         out, 180, env if cuda else {**env, "CUDA_VISIBLE_DEVICES": ""}))
    summary = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if cuda else None, "steps": steps}
    for name in ("speed", "step"):
        path = out / f"{name}-{tag}.json"
        if path.exists():
            summary[name] = _headline(json.loads(path.read_text()), name)
    (out / f"gpu-check-{args.device}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=1))
    failed = [s["step"] for s in steps if s["status"] != "ok"]
    print(f"\ngpu_check: {len(steps) - len(failed)} of {len(steps)} steps ok" + (f"; failed: {failed}" if failed else ""))
    return summary


def _headline(result: dict, name: str) -> list:
    """The rows a reader wants first: EntropyMix against its baseline, the step shares."""
    if name == "speed":
        return [f"{r['B']}x{r['H']} K={r['K']} V={r['V']} {r['dtype']}: {r['method']}: {r['ms']:.2f} ms ({r['ratio']:.2f}x)"
                for r in result["mix"] if r["ms"] is not None and ("EntropyMix" in r["method"] or "CutMix" in r["method"])] + [
            f"volumes {r['B']}x{'x'.join(map(str, r['size']))}: {r['method']}: {r['ms']:.1f} ms" + (
                f" ({r['ratio']:.2f}x BCP's)" if "ratio" in r else f" (D={r['D']}, peak {r['peak_mb']} MiB)")
            for r in result.get("volume", []) if r["ms"] is not None]
    return [f"{r['B']}x{r['size']} amp={r['amp']}: {r['what']}: {r['ms']:.1f} ms ({100 * r['share']:.1f}% of the step)"
            for r in result["step"]]


if __name__ == "__main__":
    main()
