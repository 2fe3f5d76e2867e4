"""Accuracy ablation on the embedded dataset: what each piece adds, over several seeds.

    python benchmarks/ablation.py                  # 5 settings x 3 seeds of the default example
    python benchmarks/ablation.py --quick          # a smoke run (tiny data, a few iterations)

Each run is ``examples/train.py`` in its own process, writing to ``runs/ablation/<setting>-s<seed>``;
a finished run (``results.json`` present) is skipped and an interrupted one resumes from its
checkpoint, so the whole ablation can be stopped and restarted. Writes a markdown table
(mean and std of the final mIoU), ``benchmarks/results/ablation.json`` and ``ablation.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"

SETTINGS = {
    "supervised": ["--method", "supervised"],
    "fixmatch+cutmix": ["--method", "fixmatch", "--mix", "cutmix", "--no-speed"],
    "unimatch+cutmix": ["--method", "unimatch", "--mix", "cutmix", "--no-speed"],
    "unimatch+entropymix": ["--method", "unimatch", "--mix", "entropymix", "--no-speed"],
    "unimatch+entropymix+speed": ["--method", "unimatch", "--mix", "entropymix", "--speed"],
    # selectable with --settings; not yet part of the default table
    "unimatch+classmix": ["--method", "unimatch", "--mix", "classmix", "--no-speed"],
    "unimatch+grid-random": ["--method", "unimatch", "--mix", "entropymix", "--first-select", "random",
                             "--second-select", "random", "--no-speed"],
    "unimatch+entropymix-3views": ["--method", "unimatch", "--mix", "entropymix", "--views", "3", "--no-speed"],
}
DEFAULT_SETTINGS = ["supervised", "fixmatch+cutmix", "unimatch+cutmix", "unimatch+entropymix",
                    "unimatch+entropymix+speed"]
QUICK = ["--num-labeled", "4", "--num-unlabeled", "16", "--num-val", "10", "--crop-size", "32", "--batch-size", "4",
         "--width", "8", "--iters-per-epoch", "2", "--epochs", "1"]


def run(setting: str, seed: int, out_root: Path, extra, threads: int) -> dict:
    out = out_root / f"{setting}-s{seed}"
    result = out / "results.json"
    if not result.exists():
        cmd = [sys.executable, str(TRAIN), *SETTINGS[setting], "--seed", str(seed), "--out-dir", str(out),
               "--resume", "--no-progress", *extra]
        print(" ".join(cmd[1:]), flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    ap.add_argument("--out-root", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores / jobs threads)")
    args, extra = ap.parse_known_args(argv)  # anything else goes to train.py (e.g. --epochs 20)
    if args.quick:
        extra = QUICK + extra
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(s, seed) for s in args.settings for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(jobs, pool.map(lambda j: run(*j, args.out_root, extra, threads), jobs)))
    table = {}
    for setting in args.settings:
        runs = [done[setting, seed] for seed in args.seeds]
        finals = [r["final_miou"] for r in runs]
        table[setting] = {"seeds": args.seeds, "final_miou": finals, "mean": statistics.mean(finals),
                          "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                          "best_miou": [r["best_miou"] for r in runs],
                          "minutes": sum(h["seconds"] for r in runs for h in r["history"]) / 60 / len(runs)}
    base = table.get("supervised", {}).get("mean")
    lines = ["| setting | mIoU mean | std | vs supervised | per seed | minutes / run |", "|---|---:|---:|---:|---|---:|"]
    for name, row in table.items():
        delta = "-" if base is None else f"{row['mean'] - base:+.2f}"
        seeds = ", ".join(f"{v:.2f}" for v in row["final_miou"])
        lines.append(f"| {name} | {row['mean']:.2f} | {row['std']:.2f} | {delta} | {seeds} | {row['minutes']:.1f} |")
    print("\n" + "\n".join(lines))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"extra_args": extra, "table": table}, indent=1))
    plot(table, args.results.with_suffix(".png"))
    print(f"\nwrote {args.results} and {args.results.with_suffix('.png')}")
    return table


def plot(table, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(names)), [table[n]["mean"] for n in names], yerr=[table[n]["std"] for n in names],
           capsize=4, color="#4C72B0")
    for i, n in enumerate(names):
        ax.scatter([i] * len(table[n]["final_miou"]), table[n]["final_miou"], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
