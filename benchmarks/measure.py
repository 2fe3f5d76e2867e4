"""Measurement helpers shared by the benchmarks: timing, peak memory, the machine, tables.

Every ratio a benchmark prints is taken between figures measured by these helpers in one
process: medians of repeated runs after warm-up (CUDA synchronised), and peak extra memory of
one run (CUDA: ``max_memory_allocated``; CPU: peak RSS growth, reset through
``/proc/self/clear_refs``, in a child process whose allocator returns large buffers on free).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

MEASURE = {"memory": False}  # set in the child process that measures peak memory only


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median wall time of ``repeat`` calls after ``warmup`` calls, in ms."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
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


def measure(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> Dict:
    """``{"ms", "peak_mb"}``: the time here, or the peak memory in the memory child process."""
    if MEASURE["memory"]:
        fn()  # warm-up: lazy initialisation and compilation are not the function's memory
        return {"ms": None, "peak_mb": peak_mb(fn, device)}
    return {"ms": time_ms(fn, device, repeat, warmup), "peak_mb": None}


def memory_pass(script: str, argv: List[str]) -> Optional[dict]:
    """Run ``script`` again with ``--memory-only`` in a child whose allocator returns large buffers
    to the OS on free (so peak RSS is peak memory); timings stay in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mem.json"
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        cmd = [sys.executable, script, *argv, "--memory-only", "--out", str(out)]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return None
        return json.loads(out.read_text())


def machine() -> Dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(rows, columns) -> str:
    """``columns``: ``(header, right_aligned, cell(row) -> str)`` triples."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "|".join("---:" if right else "---" for _, right, _ in columns) + "|"]
    out += ["| " + " | ".join(cell(r) for _, _, cell in columns) + " |" for r in rows]
    return "\n".join(out)
