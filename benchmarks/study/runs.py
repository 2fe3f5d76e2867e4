"""Running ``examples/train.py``: one run per process, kept and resumed across sittings and
machines, with the provenance (code, torch, CPU) that says which kept runs count."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train.py"
RESULTS = ROOT / "benchmarks" / "results"


def score(result: dict, last: int) -> float:
    """Mean validation mIoU of the last ``last`` epochs."""
    tail = [h["miou"] for h in result["history"][-last:]]
    return statistics.mean(tail)


def provenance() -> dict:
    """What a run's numbers depend on besides its arguments: the training code (the package and
    the example), the torch version, the CPU's vector ISA and its model. The same seed gives the same
    curve bit for bit only when all of them agree (and the thread count: see ``--noise``), so a kept
    run counts only for the same provenance (the study's: the same computation, see ``same_computation``)."""
    import torch
    digest = hashlib.sha256()
    for f in sorted([*ROOT.glob("entropymix/*.py"), *ROOT.glob("examples/*.py")]):
        digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return {"code": digest.hexdigest()[:16], "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(), "cpu_model": _cpu_model()}


def _cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``): machines of one ISA but another model round alike
    only sometimes, so the model is part of a run's provenance."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def same_computation(a: dict, b: dict) -> bool:
    """Whether runs of provenances ``a`` and ``b`` compute the same thing, rounding aside: the same
    training code and torch. The CPU only rounds: on every vector ISA a seed draws the same labeled
    set, data order, augmentations and initial weights, equal up to the last bits
    (``tests/test_benchmarks.py`` checks it), so a run trained on another machine is a draw of the
    rounding noise that ``--noise`` measures, paired with its seed's other runs as well as any."""
    return a.get("code") == b.get("code") and a.get("torch") == b.get("torch")


def machine(prov: dict) -> str:
    return f"{prov.get('cpu_model')} ({prov.get('cpu')})"


def run(name: str, setting: list, seed: int, out_root: Path, extra: list, threads: int, kept: Path,
        prov: dict, any_machine: bool = False) -> dict:
    """One run's results: kept from an earlier sitting (the copy beside the JSON, for the same
    train.py arguments, thread count and provenance; ``any_machine``: the same computation on any
    CPU, the copy keeping its own), else trained (resuming its checkpoint) and kept."""
    out = out_root / prov["code"] / f"{name}-s{seed}"  # a checkpoint of other code is never resumed
    result = out / "results.json"
    copy = kept / f"{name}-s{seed}.json"
    if not result.exists() and copy.exists():
        saved = json.loads(copy.read_text())
        if (saved.get("study_args") == extra and saved.get("setting_args", setting) == setting
                and saved.get("threads", 1) == threads
                and (saved.get("provenance") == prov or any_machine and same_computation(saved.get("provenance") or {}, prov))):
            return saved
    if not result.exists():
        cmd = [sys.executable, str(TRAIN), *setting, "--seed", str(seed), "--out-dir", str(out),
               "--resume", "--no-progress", *extra]
        print(" ".join(cmd[1:]), flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    data = {**json.loads(result.read_text()), "study_args": list(extra), "setting_args": list(setting),
            "threads": threads, "provenance": prov}
    kept.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(data))  # committed with the JSON: a new checkout resumes the phase
    return data


def run_all(jobs: list, out_root: Path, kept: Path, prov: dict, n_jobs: int, save, any_machine: bool = False) -> dict:
    """Train ``jobs`` ``[(name, setting flags, seed, size flags, threads)]`` ``n_jobs`` at a time;
    ``save(done)`` after every finished run, so a partial phase is on disk as it grows."""
    done: dict = {}
    with ThreadPoolExecutor(n_jobs) as pool:
        futures = {pool.submit(run, name, setting, seed, out_root, extra, threads, kept, prov, any_machine): (name, seed)
                   for name, setting, seed, extra, threads in jobs}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
            save(done)
    return done


def machines(runs) -> dict:
    """How many of ``runs`` each machine trained."""
    return dict(Counter(machine(r["provenance"]) for r in runs).most_common())


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
