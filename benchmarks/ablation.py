"""Accuracy ablation on the embedded dataset: what each piece adds, paired by seed, with intervals.

    python benchmarks/ablation.py --jobs 2          # every setting x 7 seeds (resumable)
    python benchmarks/ablation.py --noise --jobs 2  # the instrument's noise floor
    python benchmarks/ablation.py --quick           # a smoke run (tiny data, a few iterations)

Each run is ``examples/train.py`` in its own process, writing to ``runs/ablation/<setting>-s<seed>``.
A finished run (``results.json`` present) is skipped and an interrupted one resumes from its
checkpoint, so the study can span several sittings; the JSON is rewritten after every finished
run, and each run's results are kept beside it (``ablation-runs/``), so a partial study is saved
as it grows and a new checkout resumes it.

The seed fixes the labeled set, the data order and every random draw, identically for every
setting, so settings are compared *paired by seed*. A run's score is the mean validation mIoU of
its last ``--score-epochs`` epochs (less noisy than the final epoch alone). For every setting:
mean and std over seeds, and the paired difference to its reference (UniMatch + CutMix, and the
controls listed in ``COMPARISONS``) with a 95% t-interval over seeds. A difference whose interval
contains 0 is reported as "not distinguishable on this benchmark", whatever its mean.

Writes a markdown table, ``benchmarks/results/ablation.json`` (per-seed scores, per-epoch curves,
paired differences and intervals), ``ablation.png`` (differences with intervals) and
``ablation-curves.png`` (mean mIoU per epoch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"

UNI = ["--method", "unimatch"]
SETTINGS = {
    "supervised": ["--method", "supervised"],
    "unimatch+cutmix": UNI + ["--mix", "cutmix", "--no-speed"],
    "unimatch+classmix": UNI + ["--mix", "classmix", "--no-speed"],
    "unimatch+grid-random": UNI + ["--mix", "entropymix", "--first-select", "random", "--second-select", "random",
                                   "--no-speed"],
    "unimatch+entropymix": UNI + ["--mix", "entropymix", "--no-speed"],  # streams: max, sample; grid 4
    "unimatch+entropymix-max-max": UNI + ["--mix", "entropymix", "--second-select", "max", "--no-speed"],
    "unimatch+entropymix-3views": UNI + ["--mix", "entropymix", "--views", "3", "--no-speed"],
    "unimatch+entropymix-grid2": UNI + ["--mix", "entropymix", "--grid", "2", "--no-speed"],
    "unimatch+entropymix-grid8": UNI + ["--mix", "entropymix", "--grid", "8", "--no-speed"],
    "unimatch+entropymix+speed": UNI + ["--mix", "entropymix", "--speed"],
    "unimatch+entropymix+speed-relation": UNI + ["--mix", "entropymix", "--speed", "--speed-terms", "relation"],
    "unimatch+entropymix+speed-logit": UNI + ["--mix", "entropymix", "--speed", "--speed-terms", "logit"],
}
BASELINE = "unimatch+cutmix"
# (setting, reference): the questions the study answers besides "vs UniMatch + CutMix".
COMPARISONS = [
    ("unimatch+entropymix", "unimatch+grid-random"),        # does the entropy matter, beyond grid mixing?
    ("unimatch+entropymix-max-max", "unimatch+entropymix"),  # the second stream's selection
    ("unimatch+entropymix-3views", "unimatch+entropymix"),   # multi-view mixing
    ("unimatch+entropymix-grid2", "unimatch+entropymix"),    # grid 2 vs 4
    ("unimatch+entropymix-grid8", "unimatch+entropymix"),    # grid 8 vs 4
    ("unimatch+entropymix+speed", "unimatch+entropymix"),    # SPEEDLoss
    ("unimatch+entropymix+speed-relation", "unimatch+entropymix"),
    ("unimatch+entropymix+speed-logit", "unimatch+entropymix"),
    ("unimatch+cutmix", "supervised"),
]
NOISE_SETTING = "unimatch+entropymix"
# The study's run size: the example's dataset and recipe, a narrower model and half the unlabeled
# images: about 2 core-minutes a run on an AVX-512 core (about 5 on an AVX2 one), so that 12
# settings x 7 seeds take about 1.5 hours on 2 cores. Runs are deterministic on one CPU (the same
# seed twice gives the same curve, bit for bit), so the noise is the spread over seeds, which the
# pairing by seed removes where settings agree; seven seeds rather than five narrow every interval
# by a quarter (t(6) / sqrt(7) against t(4) / sqrt(5)).
STUDY = ["--width", "16", "--num-unlabeled", "384", "--epochs", "12"]
SEEDS = list(range(7))
SCORE_EPOCHS = 3
QUICK = ["--num-labeled", "4", "--num-unlabeled", "16", "--num-val", "10", "--crop-size", "32", "--batch-size", "4",
         "--width", "8", "--iters-per-epoch", "2", "--epochs", "2"]

# Two-sided 95% quantiles of Student's t by degrees of freedom (no scipy needed).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    return T95.get(df) or T95[max(k for k in T95 if k <= df)]


def t_test_p(t: float, df: int) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with integer ``df`` (Abramowitz & Stegun
    26.7.3-4, exact; no scipy needed)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, total = math.cos(theta) ** 2, 0.0
    if df % 2:
        term = math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total, term = total + term, term * c2 * 2 * k / (2 * k + 1)
        return max(0.0, 1 - 2 / math.pi * (theta + math.sin(theta) * total))
    term = 1.0
    for k in range(df // 2):
        total, term = total + term, term * c2 * (2 * k + 1) / (2 * k + 2)
    return max(0.0, 1 - math.sin(theta) * total)


def holm(diffs: list) -> None:
    """Holm's step-down adjustment of the paired-t p-values over the distinct comparisons (a pair
    and its mirror count once), set as ``p_holm`` on each difference."""
    distinct = {}
    for d in diffs:
        if d.get("p") is not None:
            distinct.setdefault(frozenset((d["setting"], d["reference"])), d["p"])
    m, running, adjusted = len(distinct), 0.0, {}
    for i, (key, p) in enumerate(sorted(distinct.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    for d in diffs:
        d["p_holm"] = adjusted.get(frozenset((d["setting"], d["reference"])))


def paired(a: list, b: list) -> dict:
    """Mean paired difference a - b with its 95% t-interval and two-sided paired-t p-value (None
    with fewer than 2 pairs)."""
    d = [x - y for x, y in zip(a, b)]
    out = {"n": len(d), "differences": d, "mean": statistics.mean(d) if d else None, "low": None, "high": None,
           "p": None}
    if len(d) > 1:
        se = statistics.stdev(d) / math.sqrt(len(d))
        half = t95(len(d) - 1) * se
        out.update(low=out["mean"] - half, high=out["mean"] + half,
                   p=t_test_p(out["mean"] / se, len(d) - 1) if se > 0 else float(out["mean"] == 0))
        out["verdict"] = ("not distinguishable on this benchmark" if out["low"] <= 0 <= out["high"]
                          else ("better" if out["mean"] > 0 else "worse"))
    return out


def score(result: dict, last: int) -> float:
    """Mean validation mIoU of the last ``last`` epochs."""
    tail = [h["miou"] for h in result["history"][-last:]]
    return statistics.mean(tail)


def provenance() -> dict:
    """What a run's numbers depend on besides its arguments: the training code (the package and
    the example), the torch version, the CPU's vector ISA and its model. The same seed gives the same
    curve bit for bit only when all of them agree (another ISA rounds differently), so a kept run counts
    only for the same provenance, and the study never mixes runs of different code or machines."""
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


def run(name: str, seed: int, out_root: Path, extra, threads: int, kept: Path, prov: dict) -> dict:
    """One run's results: kept from an earlier sitting (the copy beside the JSON, for the same
    train.py arguments and provenance), else trained (resuming its checkpoint) and kept."""
    out = out_root / prov["code"] / f"{name}-s{seed}"  # a checkpoint of other code is never resumed
    result = out / "results.json"
    copy = kept / f"{name}-s{seed}.json"
    if not result.exists() and copy.exists():
        saved = json.loads(copy.read_text())
        if saved.get("study_args") == extra and saved.get("provenance") == prov:
            return saved
    if not result.exists():
        setting = SETTINGS[name.removesuffix("-repeat")]
        cmd = [sys.executable, str(TRAIN), *setting, "--seed", str(seed), "--out-dir", str(out),
               "--resume", "--no-progress", *extra]
        print(" ".join(cmd[1:]), flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    data = {**json.loads(result.read_text()), "study_args": list(extra), "provenance": prov}
    kept.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(data))  # committed with the JSON: a new checkout resumes the study
    return data


def summarise(done: dict, settings, seeds, last: int) -> dict:
    """Per-setting scores over the seeds finished in every compared setting, and paired differences."""
    table = {}
    for name in settings:
        runs = {s: done[name, s] for s in seeds if (name, s) in done}
        if not runs:
            continue
        scores = {s: score(r, last) for s, r in runs.items()}
        table[name] = {
            "seeds": sorted(scores), "score": [scores[s] for s in sorted(scores)],
            "mean": statistics.mean(scores.values()),
            "std": statistics.stdev(scores.values()) if len(scores) > 1 else 0.0,
            "final_miou": [runs[s]["final_miou"] for s in sorted(scores)],
            "curves": {str(s): [h["miou"] for h in runs[s]["history"]] for s in sorted(scores)},
            "minutes": statistics.mean(sum(h["seconds"] for h in r["history"]) / 60 for r in runs.values()),
        }
    comparisons = [(n, BASELINE) for n in table if n != BASELINE] + COMPARISONS
    diffs = []
    for a, b in comparisons:
        if a in table and b in table and (a, b) not in [(d["setting"], d["reference"]) for d in diffs]:
            common = [s for s in table[a]["seeds"] if s in table[b]["seeds"]]
            pa = [table[a]["score"][table[a]["seeds"].index(s)] for s in common]
            pb = [table[b]["score"][table[b]["seeds"].index(s)] for s in common]
            diffs.append({"setting": a, "reference": b, "seeds": common, **paired(pa, pb)})
    holm(diffs)
    return {"table": table, "differences": diffs}


def noise_floor(done: dict, seeds, last: int) -> dict:
    """Same seed twice (the run-to-run floor) and the spread over seeds, for one setting."""
    pairs = [(done[NOISE_SETTING, s], done[NOISE_SETTING + "-repeat", s]) for s in seeds
             if (NOISE_SETTING, s) in done and (NOISE_SETTING + "-repeat", s) in done]
    rep = [abs(score(a, last) - score(b, last)) for a, b in pairs]
    final_rep = [abs(a["final_miou"] - b["final_miou"]) for a, b in pairs]
    across = [score(done[NOISE_SETTING, s], last) for s in seeds if (NOISE_SETTING, s) in done]
    finals = [done[NOISE_SETTING, s]["final_miou"] for s in seeds if (NOISE_SETTING, s) in done]
    return {"setting": NOISE_SETTING, "score_epochs": last, "same_seed_abs_diff": rep, "same_seed_abs_diff_final": final_rep,
            "seed_std_score": statistics.stdev(across) if len(across) > 1 else None,
            "seed_std_final": statistics.stdev(finals) if len(finals) > 1 else None, "seeds": list(seeds)}


def markdown(summary: dict) -> str:
    lines = ["| setting | seeds | score mean | std | vs UniMatch + CutMix (95% CI) | verdict | min / run |",
             "|---|---:|---:|---:|---|---|---:|"]
    by_pair = {(d["setting"], d["reference"]): d for d in summary["differences"]}
    for name, row in summary["table"].items():
        d = by_pair.get((name, BASELINE))
        ci = "-" if not d or d["low"] is None else f"{d['mean']:+.2f} ({d['low']:+.2f}, {d['high']:+.2f})"
        std = f"{row['std']:.2f}" if len(row["seeds"]) > 1 else "-"
        lines.append(f"| {name} | {len(row['seeds'])} | {row['mean']:.2f} | {std} | {ci} | "
                     f"{(d or {}).get('verdict', '-')} | {row['minutes']:.1f} |")
    lines += ["", "| comparison | seeds | mean difference (95% CI) | verdict |", "|---|---:|---|---|"]
    for d in summary["differences"]:
        if d["reference"] != BASELINE and d["low"] is not None:
            lines.append(f"| {d['setting']} - {d['reference']} | {d['n']} | {d['mean']:+.2f} ({d['low']:+.2f}, "
                         f"{d['high']:+.2f}) | {d['verdict']} |")
    return "\n".join(lines)


# What each comparison answers, for the report's findings (setting, reference) -> question.
QUESTIONS = {
    ("unimatch+entropymix", BASELINE): "EntropyMix instead of CutMix inside UniMatch",
    ("unimatch+entropymix", "unimatch+grid-random"): "the entropy selection (EntropyMix vs the same grid patches picked at random)",
    ("unimatch+grid-random", BASELINE): "grid patches picked at random instead of CutMix",
    ("unimatch+entropymix-max-max", "unimatch+entropymix"): "`max` instead of `sample` for the second stream",
    ("unimatch+entropymix-3views", "unimatch+entropymix"): "mixing 3 views instead of 2",
    ("unimatch+entropymix-grid2", "unimatch+entropymix"): "grid 2 instead of 4",
    ("unimatch+entropymix-grid8", "unimatch+entropymix"): "grid 8 instead of 4",
    ("unimatch+entropymix+speed", "unimatch+entropymix"): "SPEEDLoss (both terms) on top of EntropyMix",
    ("unimatch+entropymix+speed-relation", "unimatch+entropymix"): "SPEEDLoss's relation term alone",
    ("unimatch+entropymix+speed-logit", "unimatch+entropymix"): "SPEEDLoss's logit term alone",
    ("unimatch+classmix", BASELINE): "ClassMix instead of CutMix",
    ("unimatch+cutmix", "supervised"): "UniMatch + CutMix over the supervised baseline",
}


def _ci(d: dict) -> str:
    return (f"{d['mean']:+.2f} mIoU (95% CI {d['low']:+.2f} to {d['high']:+.2f}, {d['n']} seeds; paired t "
            f"p = {d['p']:.3f}, Holm-adjusted {d['p_holm']:.2f})")


def report(results: dict, calibration: Optional[dict] = None, total_runs: int = len(SETTINGS) * len(SEEDS)) -> str:
    """The README's ablation section, every number read from ``results`` (``ablation.json``) and
    ``calibration`` (``--noise`` output); findings only from intervals that exclude 0."""
    args = results["extra_args"]
    size = " ".join(args)
    table, diffs = results["table"], [d for d in results["differences"] if d["low"] is not None]
    lines = [
        "`python benchmarks/ablation.py --jobs 2` trains the example under "
        f"{len(SETTINGS)} settings x {len(results['seeds'])} seeds: supervised only; UniMatch with CutMix, ClassMix, "
        "grid patches picked at random (the control: entropy ignored), EntropyMix (streams `max`/`sample`, and "
        "`max`/`max`), EntropyMix over 3 views, grids 2 and 8 (4 is the default), and EntropyMix + SPEEDLoss with "
        "both terms, the relation term only, and the logit term only. The seed fixes the labeled set, the data order "
        "and every random draw, the same for every setting, so settings are compared paired by seed. Run size "
        f"(`ablation.STUDY`, train.py flags `{size}`): the example's data and recipe with a narrower model and "
        f"fewer unlabeled images. A run's score is the {results['score']}; a paired difference is reported with its "
        "95% t-interval over seeds, and one whose interval contains 0 is \"not distinguishable on this benchmark\", "
        "whatever its mean.",
        "",
    ]
    prov = results.get("provenance")
    if prov:
        lines[-2] += (" Every run was trained on one machine with one code base: training code fingerprint "
                      f"`{prov['code']}` (`entropymix/` and `examples/`), torch {prov['torch']}, CPU kernels at "
                      f"{prov['cpu']}. A kept run of other code, torch or CPU is trained again, never mixed in: another "
                      "vector ISA rounds differently, and rounding alone moves a run's curve.")
    if calibration and calibration.get("noise"):
        n = calibration["noise"]
        same = ", ".join(f"{v:.2f}" for v in n["same_seed_abs_diff"])
        repeat = ("the same seed run twice gives the same curve bit for bit (score differences "
                  f"{same} mIoU), so there is no run-to-run noise and the noise is the spread over seeds"
                  if not any(n["same_seed_abs_diff"]) else
                  f"the same seed run twice differs by {same} mIoU (score), on top of the spread over seeds")
        where = "" if calibration.get("provenance") == prov else " (measured with other code or on another machine)"
        lines += [f"**Noise floor** (`python benchmarks/ablation.py --noise`, `benchmarks/results/ablation-calibration.json`; "
                  f"{n['setting']} with `{' '.join(n['extra_args'])}`, seeds {', '.join(map(str, n['seeds']))}{where}): "
                  f"{repeat}: {n['seed_std_score']:.2f} mIoU (std of the mean of the last {n['score_epochs']} epochs) and "
                  f"{n['seed_std_final']:.2f} (final epoch)."]
    spreads = ", ".join(f"{k} {table[k]['std']:.2f}" for k in (BASELINE, "unimatch+entropymix") if k in table
                        and len(table[k]["seeds"]) > 1)
    widths = [d["high"] - d["low"] for d in diffs]
    if spreads and widths:
        lines[-1] += (f" In the study itself the std over seeds is {spreads} mIoU, and the 95% intervals of the paired "
                      f"differences are {min(widths):.1f} to {max(widths):.1f} mIoU wide: differences smaller than "
                      "about half that width cannot be resolved here.")
    done = results["finished_runs"]
    status = ("all runs finished" if done >= total_runs else
              f"{done} of {total_runs} runs finished; the study resumes where it stopped, in this checkout or a new one "
              "(each finished run is kept in `benchmarks/results/ablation-runs/`)")
    lines += ["", f"**Status: {status}.** Minutes per run were measured with two runs sharing the two cores, at times with tests running beside them.", "",
              markdown(results), "", "![paired differences](benchmarks/results/ablation.png)", ""]
    found, unclear = [], []
    for (a, b), question in QUESTIONS.items():
        d = next((d for d in diffs if (d["setting"], d["reference"]) == (a, b)), None)
        if d is None:
            continue
        if d["low"] > 0:
            found.append(f"- {question}: **helped**, {_ci(d)}.")
        elif d["high"] < 0:
            found.append(f"- {question}: **hurt**, {_ci(d)}.")
        else:
            unclear.append(f"- {question}: {_ci(d)}.")
    lines += ["**What this benchmark shows.** Intervals that exclude 0:", ""]
    lines += found or ["- none."]
    lines += ["", "Not distinguishable on this benchmark (the interval contains 0, whatever the sign of the mean):", ""]
    lines += unclear or ["- none."]
    distinct = {frozenset((d["setting"], d["reference"])) for d in diffs}
    kept = [QUESTIONS[d["setting"], d["reference"]] for d in diffs
            if (d["setting"], d["reference"]) in QUESTIONS and d["p_holm"] < 0.05]
    m = len(distinct)
    lines += ["", f"These are {m} distinct comparisons at 95% each: were no setting different from another, about "
              f"{0.05 * m:.1f} of them would exclude 0 by chance alone. Corrected for all {m} (Holm), "
              + (f"{len(kept)} finding(s) hold at the 5% level: {'; '.join(kept)}." if kept else
                 ("none of the findings above holds at the 5% level: they are leads for a larger study, not results."
                  if found else "nothing holds at the 5% level, before or after the correction."))
              + " This is a small "
              "from-scratch benchmark on CPU (a width-16 model on the embedded `shapes` data), not a replication of the "
              "paper's VOC and Cityscapes results, which need a pretrained ResNet-101 DeepLabV3+. "
              "`benchmarks/results/ablation-curves.png` plots the mean mIoU per epoch of every setting"]
    if BASELINE in table:
        curve = [statistics.mean(c) for c in zip(*table[BASELINE]["curves"].values())]
        if len(curve) > SCORE_EPOCHS:
            rise = curve[-1] - curve[-1 - SCORE_EPOCHS]
            lines[-1] += (f"; {BASELINE}'s mean curve still rises {rise:+.1f} mIoU over its last {SCORE_EPOCHS} epochs, "
                          "so at this run size the study compares runs that have not converged")
    lines[-1] += "."
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--noise", action="store_true",
                    help=f"measure the noise floor: {NOISE_SETTING} twice per seed (same seed, same code)")
    ap.add_argument("--score-epochs", type=int, default=SCORE_EPOCHS,
                    help="a run's score: mean mIoU of its last N epochs")
    ap.add_argument("--out-root", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores / jobs threads)")
    ap.add_argument("--report", action="store_true",
                    help="print the README section from the saved JSON (and the calibration beside it); trains nothing")
    args, extra = ap.parse_known_args(argv)
    if args.report:
        calibration = args.results.with_name(args.results.stem + "-calibration.json")
        results = json.loads(args.results.read_text())
        print(report(results, json.loads(calibration.read_text()) if calibration.exists() else None))
        here = provenance()
        if results.get("provenance") != here:  # the README would describe other code or another machine
            print(f"ablation.py: the study in {args.results} was trained with {results.get('provenance')}, this "
                  f"checkout is {here}: rerun `python benchmarks/ablation.py --jobs 2` before quoting it",
                  file=sys.stderr)
        return {}  # anything else goes to train.py (e.g. --epochs 20)
    extra = (QUICK if args.quick else STUDY) + extra  # later flags win: extra args override the study size
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.noise:
        jobs = [(n, s) for s in args.seeds for n in (NOISE_SETTING, NOISE_SETTING + "-repeat")]
    else:  # seed-major: a partial study holds whole seeds of every setting
        jobs = [(n, s) for s in args.seeds for n in args.settings]
    old = json.loads(args.results.read_text()) if args.results.exists() else {}
    prov = provenance()
    done: dict = {}
    summary: dict = {}

    def save():
        nonlocal summary
        summary = summarise(done, args.settings, args.seeds, args.score_epochs)
        out = {**{k: v for k, v in old.items() if k == "noise"}, "extra_args": extra, "provenance": prov,
               "seeds": args.seeds,
               "score": f"mean validation mIoU of the last {args.score_epochs} epochs", **summary,
               "finished_runs": len([k for k in done if not k[0].endswith("-repeat")])}
        if args.noise:
            out["noise"] = noise_floor(done, args.seeds, args.score_epochs)
            out.update({k: v for k, v in old.items() if k not in ("noise", "extra_args")})
            out["noise"]["extra_args"] = extra
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=1))
        return out

    with ThreadPoolExecutor(args.jobs) as pool:
        kept = args.results.with_name(args.results.stem + "-runs")
        futures = {pool.submit(run, n, s, args.out_root, extra, threads, kept, prov): (n, s) for n, s in jobs}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
            save()  # the partial study is on disk as it grows
    out = save()
    if args.noise:
        print(json.dumps(out["noise"], indent=1))
    else:
        print("\n" + markdown(summary))
        plot(summary, args.results.with_suffix(".png"), args.results.with_name(args.results.stem + "-curves.png"))
        print(f"\nwrote {args.results} and its plots")
    return summary["table"]


def plot(summary: dict, diff_path: Path, curve_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs, seen = [], set()
    for d in summary["differences"]:  # a pair and its mirror (supervised vs CutMix) are drawn once
        if d["low"] is not None and (d["reference"], d["setting"]) not in seen:
            diffs.append(d)
            seen.add((d["setting"], d["reference"]))
    if diffs:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(diffs) + 1.2))
        for i, d in enumerate(diffs):
            colour = "#999999" if d["low"] <= 0 <= d["high"] else ("#2a9d3f" if d["mean"] > 0 else "#c0392b")
            ax.errorbar(d["mean"], i, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", color=colour,
                        capsize=3)
            ax.scatter(d["differences"], [i] * len(d["differences"]), s=6, color="black", zorder=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(diffs)))
        ax.set_yticklabels([f"{d['setting']} - {d['reference']}" for d in diffs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("paired mIoU difference, mean and 95% CI (grey: contains 0)")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(diff_path, dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours = plt.get_cmap("tab20")
    for i, (name, row) in enumerate(summary["table"].items()):
        curves = list(row["curves"].values())
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[e] for c in curves) for e in range(n)]
        ax.plot(range(1, n + 1), mean, label=f"{name} ({len(curves)} seeds)", lw=1.2, color=colours(i),
                ls="-" if i % 2 == 0 else "--")
    ax.set(xlabel="epoch", ylabel="val mIoU (%), mean over seeds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(curve_path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
