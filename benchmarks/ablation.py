"""Accuracy evidence on the embedded dataset, in three phases, paired by seed, with intervals.

    python benchmarks/ablation.py --calibrate --jobs 2  # 1. the run size, chosen on the baselines only
    python benchmarks/ablation.py --select --jobs 2     # 2. SPEEDLoss's weight, on calibration seeds
    python benchmarks/ablation.py --noise --jobs 2      # how far a run moves when only rounding changes
    python benchmarks/ablation.py --jobs 2              # 3. the focused study, on held-out seeds
    python benchmarks/ablation.py --quick               # a smoke run (tiny data, a few iterations)
    python benchmarks/ablation.py --report              # the README section, from the JSON files

1. **Calibration** trains only the baselines (supervised, UniMatch + CutMix, FixMatch + CutMix) of
   every candidate run size in ``CANDIDATES`` on ``CALIBRATION_SEEDS``, and checks that the runs
   converge, that semi-supervised learning beats the labeled images alone by at least ``POSITIVE``
   mIoU (the positive control), and that the paired spread of two semi-supervised baselines
   predicts a 95% half-width of at most ``HALF_WIDTH`` mIoU at the study's seed count. EntropyMix
   and SPEEDLoss never run here: the benchmark is not tuned toward the methods it tests.
2. **Selection** trains UniMatch + EntropyMix + SPEEDLoss at each weight of ``SPEED_WEIGHTS`` on
   the calibration seeds and keeps the best mean score. Nothing else gets a tuning budget.
3. **The study** trains ``SETTINGS`` on ``STUDY_SEEDS``, seeds used by neither phase before.

Each run is ``examples/train.py`` in its own process, writing to ``runs/<phase>/<code>/<run>-s<seed>``.
A finished run (``results.json`` present) is skipped and an interrupted one resumes from its
checkpoint, so every phase can span several sittings; the JSON is rewritten after every finished
run, and each run's results are kept beside it (``*-runs/``), so a partial phase is saved as it
grows and a new checkout resumes it. A study may span machines: a kept run of the same code and
torch counts on any CPU (the seed draws the same data and weights everywhere, up to rounding), and
the report says how many runs each machine trained.

The seed fixes the labeled set, the data order and every random draw, identically for every
setting, so settings are compared *paired by seed*. A run's score is the mean validation mIoU of
its last ``--score-epochs`` epochs. For every setting: mean and std over seeds, and the paired
difference to its reference (UniMatch + CutMix, and the questions in ``COMPARISONS``) with a 95%
t-interval over seeds and Holm's correction over all of them. A difference whose interval
contains 0 is reported as "not distinguishable on this benchmark", whatever its mean.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
RESULTS = ROOT / "benchmarks" / "results"

# --- phase 1: calibration, baselines only ------------------------------------------------------------
BASELINE = "unimatch+cutmix"
FIXMATCH = "fixmatch+cutmix"  # a second semi-supervised baseline: its paired spread predicts the study's
CALIBRATION_SEEDS = [100, 101, 102, 103]
CANDIDATES = {  # name: (train.py flags, why it is a candidate), in the order they were tried
    "w16-c48-u384-e30": (["--width", "16", "--crop-size", "48", "--num-unlabeled", "384", "--epochs", "30"],
                         "the cheapest: 48-pixel images and crops (about 0.6 of a 64-pixel iteration's cost), a "
                         "width-16 model, 1440 iterations"),
    "w16-c48-u768-e30": (["--width", "16", "--crop-size", "48", "--epochs", "30"],
                         "the first failed its positive control and still climbed: twice the unlabeled images, "
                         "2880 iterations (a pilot of the example at 40 epochs, 3840 iterations, showed UniMatch's "
                         "gain over supervised growing late in the schedule)"),
    "w16-c64-u768-e40": (["--width", "16", "--epochs", "40"],
                         "48-pixel images left UniMatch within 1.5 mIoU of supervised (both plateau near 51): the "
                         "example's 64-pixel images, width 16, the pilot's 3840 iterations"),
    "w16-c64-u768-e20-lr6e-3": (["--width", "16", "--epochs", "20", "--lr", "6e-3"],
                                "as the third at half the iterations (1920) and twice the learning rate: the pilot's "
                                "20-epoch runs were still climbing when the learning rate reached 0"),
}
CONVERGED = 0.25     # mIoU per epoch: the largest gain over the last quarter of the schedule
POSITIVE = 5.0       # mIoU: UniMatch + CutMix over supervised, at least, its interval excluding 0
HALF_WIDTH = 1.0     # mIoU: the goal for a paired difference's 95% half-width in the study

# --- phase 2: SPEEDLoss's weight, on the calibration seeds ----------------------------------------
SPEED_WEIGHTS = (0.1, 0.3, 1.0)  # the paper gives none; log-spaced around the example's 0.5

# --- phase 3: the focused study, on held-out seeds --------------------------------------------------
STUDY = CANDIDATES["w16-c64-u768-e40"][0]  # the calibration's choice (a test holds it to the JSON)
SPEED_WEIGHT = 1.0                          # the selection's choice (a test holds it to the JSON)
STUDY_SEEDS = list(range(1000, 1008))       # never used by calibration or selection
SCORE_EPOCHS = 3

UNI = ["--method", "unimatch"]
SPEED = ["--speed", "--speed-weight", str(SPEED_WEIGHT)]
SETTINGS = {
    "supervised": ["--method", "supervised"],
    BASELINE: UNI + ["--mix", "cutmix", "--no-speed"],
    "unimatch+classmix": UNI + ["--mix", "classmix", "--no-speed"],
    "unimatch+grid-random": UNI + ["--mix", "entropymix", "--first-select", "random", "--second-select", "random",
                                   "--no-speed"],
    "unimatch+entropymix": UNI + ["--mix", "entropymix", "--no-speed"],  # streams: max, sample; grid 4
    "unimatch+entropymix-3views": UNI + ["--mix", "entropymix", "--views", "3", "--no-speed"],
    "unimatch+entropymix+speed": UNI + ["--mix", "entropymix"] + SPEED,
    "unimatch+cutmix+speed": UNI + ["--mix", "cutmix"] + SPEED,
}
CALIBRATION_SETTINGS = {"supervised": SETTINGS["supervised"], BASELINE: SETTINGS[BASELINE],
                        FIXMATCH: ["--method", "fixmatch", "--mix", "cutmix", "--no-speed"]}
SELECT_SETTING = "unimatch+entropymix+speed"
# (setting, reference): the questions the study answers, besides "vs UniMatch + CutMix".
COMPARISONS = [
    ("unimatch+entropymix", "unimatch+grid-random"),         # does the entropy matter, beyond grid mixing?
    ("unimatch+entropymix-3views", "unimatch+entropymix"),   # multi-view mixing
    ("unimatch+entropymix+speed", "unimatch+entropymix"),    # SPEEDLoss with EntropyMix
    ("unimatch+cutmix+speed", BASELINE),                     # SPEEDLoss with CutMix (plug-and-play)
    (BASELINE, "supervised"),                                # the positive control
]
NOISE_SETTINGS = ["supervised", BASELINE]
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


def summarise(done: dict, settings, seeds, last: int, comparisons=None) -> dict:
    """Per-setting scores over the seeds finished in every compared setting, and paired differences
    (Holm-adjusted over all of them). Each row keeps the per-epoch curves and what the mixers did."""
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
        mixing = {str(s): [h["mixing"] for h in runs[s]["history"]] for s in sorted(scores)
                  if all("mixing" in h for h in runs[s]["history"])}
        if mixing:  # per epoch and stream: mean share of each view, share of samples taken whole
            table[name]["mixing"] = mixing
    pairs = [(n, BASELINE) for n in table if n != BASELINE] + list(COMPARISONS if comparisons is None else comparisons)
    diffs = []
    for a, b in pairs:
        if a in table and b in table and (a, b) not in [(d["setting"], d["reference"]) for d in diffs]:
            common = [s for s in table[a]["seeds"] if s in table[b]["seeds"]]
            pa = [table[a]["score"][table[a]["seeds"].index(s)] for s in common]
            pb = [table[b]["score"][table[b]["seeds"].index(s)] for s in common]
            diffs.append({"setting": a, "reference": b, "seeds": common, **paired(pa, pb)})
    holm(diffs)
    return {"table": table, "differences": diffs}


def mean_curve(row: dict) -> list:
    curves = list(row["curves"].values())
    return [statistics.mean(c[e] for c in curves) for e in range(min(map(len, curves)))]


def slope(curve: list) -> float:
    """Least-squares gain per epoch over the last quarter of ``curve`` (at least 2 epochs)."""
    tail = curve[-max(2, len(curve) // 4):]
    xs = range(len(tail))
    mx, my = statistics.mean(xs), statistics.mean(tail)
    return sum((x - mx) * (y - my) for x, y in zip(xs, tail)) / sum((x - mx) ** 2 for x in xs)


def predicted_half_width(differences: list, n: int) -> Optional[float]:
    """95% half-width of a paired difference over ``n`` seeds, with the spread of ``differences``."""
    return t95(n - 1) * statistics.stdev(differences) / math.sqrt(n) if len(differences) > 1 else None


def convergence(table: dict) -> dict:
    """Each setting's gain per epoch over the last quarter of its mean curve."""
    return {name: slope(mean_curve(row)) for name, row in table.items()}


def checks(summary: dict, study_seeds: int) -> dict:
    """The calibration criteria of one candidate, from its baselines' runs."""
    table = summary["table"]
    by_pair = {(d["setting"], d["reference"]): d for d in summary["differences"]}
    gains = convergence(table)
    pos = by_pair.get((BASELINE, "supervised"))
    spread = by_pair.get((FIXMATCH, BASELINE))
    half = predicted_half_width(spread["differences"], study_seeds) if spread else None
    out = {"last_quarter_gain_per_epoch": gains,
           "converged": all(gains.get(n, math.inf) < CONVERGED for n in ("supervised", BASELINE)),
           "positive_control": pos and {k: pos[k] for k in ("mean", "low", "high", "n")},
           "positive_control_holds": bool(pos and pos["low"] is not None and pos["mean"] >= POSITIVE
                                          and pos["low"] > 0),
           "fixmatch_vs_unimatch": spread and {k: spread[k] for k in ("mean", "differences", "n")},
           "predicted_half_width": half, "study_seeds": study_seeds,
           "half_width_ok": half is not None and half <= HALF_WIDTH,
           "minutes_per_run": {name: row["minutes"] for name, row in table.items()}}
    out["passes"] = out["converged"] and out["positive_control_holds"] and out["half_width_ok"]
    return out


def machines(runs) -> dict:
    """How many of ``runs`` each machine trained."""
    return dict(Counter(machine(r["provenance"]) for r in runs).most_common())


def _calibration(args) -> Path:
    """Where phases 1 and 2 and the noise reruns write (beside the study's JSON); their runs are kept
    under ``<stem>-runs/``."""
    return args.results.with_name(args.results.stem + "-calibration.json")


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def calibrate(args, prov: dict, threads: int) -> dict:
    """Phase 1: every candidate's baselines on the calibration seeds; the criteria and the pick."""
    path = _calibration(args)
    old = _load(path)
    names = args.candidates or list(CANDIDATES)
    jobs = [(n, flags, s, CANDIDATES[c][0], threads) for c in names for s in args.seeds
            for n, flags in CALIBRATION_SETTINGS.items()]
    per: dict = {c: {} for c in names}

    def save(done) -> dict:
        cands = dict(_load(path).get("candidates", old.get("candidates", {})))
        for c in names:
            if per[c]:
                summary = summarise(per[c], CALIBRATION_SETTINGS, args.seeds, args.score_epochs, [(BASELINE, "supervised")])
                seeds = [s for s in args.seeds if all((n, s) in per[c] for n in CALIBRATION_SETTINGS)]
                cands[c] = {"args": CANDIDATES[c][0], "why": CANDIDATES[c][1], "seeds": seeds, **summary,
                            "checks": checks(summary, len(STUDY_SEEDS))}
        passing = [c for c, v in cands.items() if v["checks"]["passes"]]
        chosen = min(passing, key=lambda c: cands[c]["checks"]["minutes_per_run"].get(BASELINE, 0), default=None)
        out = {**{k: v for k, v in _load(path).items() if k in ("selection", "noise")}, "provenance": prov,
               "score": f"mean validation mIoU of the last {args.score_epochs} epochs",
               "criteria": {"converged": f"least-squares gain of the mean curve over the last quarter of the schedule "
                                         f"below {CONVERGED} mIoU per epoch, supervised and {BASELINE}",
                            "positive_control": f"{BASELINE} - supervised at least {POSITIVE} mIoU, its 95% paired "
                                                f"interval excluding 0",
                            "half_width": f"95% half-width predicted for {len(STUDY_SEEDS)} seeds from the spread of "
                                          f"the paired {FIXMATCH} - {BASELINE} differences, at most {HALF_WIDTH} mIoU",
                            "choice": "the cheapest passing candidate (minutes per UniMatch run)"},
               "candidates": cands, "chosen": chosen}
        path.write_text(json.dumps(out, indent=1))
        return out

    for c in names:  # candidate by candidate, each one's runs in parallel
        run_all([j for j in jobs if j[3] == CANDIDATES[c][0]], args.out_root / "calibration" / c,
                path.with_name(path.stem + "-runs") / c, prov, args.jobs,
                lambda done, c=c: (per[c].update(done), save(done)))
    return save({})


def select(args, prov: dict, threads: int) -> dict:
    """Phase 2: SPEEDLoss's weight, UniMatch + EntropyMix + SPEEDLoss on the calibration seeds at
    the chosen run size; the best mean score wins."""
    path = _calibration(args)
    base = SETTINGS[SELECT_SETTING][:-len(SPEED)] + ["--speed"]
    names = {f"{SELECT_SETTING}-w{w:g}": base + ["--speed-weight", str(w)] for w in SPEED_WEIGHTS}
    jobs = [(n, flags, s, STUDY, threads) for s in args.seeds for n, flags in names.items()]

    def save(done) -> dict:
        summary = summarise(done, names, args.seeds, args.score_epochs, [])
        means = {n: row["mean"] for n, row in summary["table"].items() if len(row["seeds"]) == len(args.seeds)}
        best = max(means, key=means.get) if len(means) == len(names) else None  # only from the whole grid
        out = _load(path)
        out["selection"] = {"setting": SELECT_SETTING, "weights": list(SPEED_WEIGHTS), "seeds": args.seeds,
                            "args": STUDY, "provenance": prov, "table": summary["table"],
                            "rule": "the weight with the best mean score over the calibration seeds",
                            "chosen": None if best is None else SPEED_WEIGHTS[list(names).index(best)]}
        path.write_text(json.dumps(out, indent=1))
        return out

    run_all(jobs, args.out_root / "selection", path.with_name(path.stem + "-runs") / "selection", prov, args.jobs,
            save)
    return _load(path)


def noise(args, prov: dict, threads: int) -> dict:
    """How far a run moves when nothing but rounding changes: the calibration seeds' baselines at the
    study size again, with the same thread count (bit for bit?) and another one (the same
    arithmetic, summed in another order)."""
    path = _calibration(args)
    other = 2 if threads == 1 else 1
    jobs = [(n + suffix, SETTINGS[n], s, STUDY, t) for s in args.seeds for n in NOISE_SETTINGS
            for suffix, t in (("", threads), ("-repeat", threads), (f"-threads{other}", other))]
    out_root = args.out_root / "calibration" / _chosen_name()
    kept = path.with_name(path.stem + "-runs") / _chosen_name()

    def save(done) -> dict:
        rows = {}
        for n in NOISE_SETTINGS:
            seeds = [s for s in args.seeds if (n, s) in done]
            base = [score(done[n, s], args.score_epochs) for s in seeds]
            calibrated = _load(path).get("candidates", {}).get(_chosen_name(), {}).get("table", {}).get(n)
            spread = calibrated["std"] if calibrated and len(calibrated["seeds"]) > 1 else None
            row = {"seeds": seeds, "score": base, "seed_std": spread}  # over the calibration's seeds
            for suffix in ("-repeat", f"-threads{other}"):
                pairs = [(done[n, s], done[n + suffix, s]) for s in seeds if (n + suffix, s) in done]
                row[suffix.lstrip("-")] = {
                    "score_abs_diff": [abs(score(a, args.score_epochs) - score(b, args.score_epochs)) for a, b in pairs],
                    "identical_curves": [[h["miou"] for h in a["history"]] == [h["miou"] for h in b["history"]]
                                         for a, b in pairs]}
            rows[n] = row
        out = _load(path)
        out["noise"] = {"args": STUDY, "provenance": prov, "threads": threads, "perturbed_threads": other,
                        "score_epochs": args.score_epochs, "settings": rows}
        path.write_text(json.dumps(out, indent=1))
        return out

    run_all(jobs, out_root, kept, prov, args.jobs, save)
    return _load(path)


def _chosen_name() -> str:
    return next(c for c, (flags, _) in CANDIDATES.items() if flags == STUDY)


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



# What each comparison answers, for the report's findings: (setting, reference) -> question.
QUESTIONS = {
    ("unimatch+entropymix", BASELINE): "Does EntropyMix beat CutMix (inside UniMatch)?",
    ("unimatch+entropymix", "unimatch+grid-random"): "Does entropy selection beat random grid patches (the same "
                                                     "grid, patches picked at random)?",
    ("unimatch+entropymix-3views", "unimatch+entropymix"): "Do 3 views beat 2 (EntropyMix)?",
    ("unimatch+entropymix+speed", "unimatch+entropymix"): "Does SPEEDLoss help with EntropyMix?",
    ("unimatch+cutmix+speed", BASELINE): "Does SPEEDLoss help with CutMix?",
    ("unimatch+classmix", BASELINE): "Does ClassMix beat CutMix?",
    ("unimatch+grid-random", BASELINE): "Do random grid patches beat CutMix?",
    (BASELINE, "supervised"): "Does UniMatch + CutMix beat supervised training (the positive control)?",
}


def _ci(d: dict) -> str:
    return (f"{d['mean']:+.2f} mIoU (95% CI {d['low']:+.2f} to {d['high']:+.2f}, {d['n']} seeds; paired t "
            f"p = {d['p']:.3f}, Holm-adjusted {d['p_holm']:.3f})")


def _answer(d: dict) -> str:
    if d["p_holm"] < 0.05:
        return "**yes**" if d["mean"] > 0 else "**no, it is worse**"
    if d["low"] > 0 or d["high"] < 0:
        return "not after Holm's correction (the uncorrected interval excludes 0)"
    return "not distinguishable on this benchmark"


def calibration_report(cal: dict) -> list:
    cands = cal.get("candidates", {})
    lines = ["**1. Calibration** (`--calibrate`, baselines only, calibration seeds; "
             "`benchmarks/results/ablation-calibration.json`). Criteria: " + "; ".join(cal["criteria"].values()) + ".",
             "", "| candidate | train.py flags | seeds | supervised | UniMatch + CutMix | FixMatch + CutMix | "
             "UniMatch - supervised (95% CI) | last-quarter gain / epoch (sup., UniMatch) | predicted half-width | "
             "min / UniMatch run | passes |", "|---|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for name, c in cands.items():
        t, ch = c["table"], c["checks"]
        pos, gain = ch["positive_control"], ch["last_quarter_gain_per_epoch"]
        means = {n: f"{t[n]['mean']:.2f}" if n in t else "-" for n in CALIBRATION_SETTINGS}
        ci = "-" if not pos or pos["low"] is None else f"{pos['mean']:+.2f} ({pos['low']:+.2f}, {pos['high']:+.2f})"
        half = "-" if ch["predicted_half_width"] is None else f"{ch['predicted_half_width']:.2f}"
        lines.append(f"| {name} | `{' '.join(c['args'])}` | {len(c['seeds'])} | {means['supervised']} | "
                     f"{means[BASELINE]} | {means[FIXMATCH]} | {ci} | {gain.get('supervised', math.nan):+.2f}, "
                     f"{gain.get(BASELINE, math.nan):+.2f} | {half} | "
                     f"{ch['minutes_per_run'].get(BASELINE, math.nan):.1f} | {'yes' if ch['passes'] else 'no'} |")
    lines += [""] + [f"- {name}: {c['why']}." for name, c in cands.items()]
    chosen = cal.get("chosen")
    lines += ["", f"Chosen: **{chosen}** ({cal['criteria']['choice']})." if chosen else
              "No candidate passes every criterion yet: the study has no calibrated run size."]
    return lines


def selection_report(sel: dict) -> list:
    lines = [f"**2. SPEEDLoss's weight** (`--select`; {sel['setting']} at the chosen run size, calibration seeds "
             f"{', '.join(map(str, sel['seeds']))}; {sel['rule']}; the grid `SPEED_WEIGHTS` is declared in the code "
             "and nothing else gets a tuning budget): ", "", "| --speed-weight | seeds | scores | mean |",
             "|---:|---:|---|---:|"]
    for w, row in zip(sel["weights"], sel["table"].values()):
        lines.append(f"| {w:g} | {len(row['seeds'])} | {', '.join(f'{v:.2f}' for v in row['score'])} | "
                     f"{row['mean']:.2f} |")
    lines += ["", f"Chosen: `--speed-weight {sel['chosen']:g}`, used by every SPEEDLoss setting of the study."
              if sel.get("chosen") is not None else "No weight chosen yet."]
    return lines


def noise_report(nz: dict) -> list:
    parts = []
    for name, row in nz["settings"].items():
        rep, pert = row.get("repeat", {}), row.get(f"threads{nz['perturbed_threads']}", {})
        same = ("bit-identical curves" if rep.get("identical_curves") and all(rep["identical_curves"]) else
                "score differences " + ", ".join(f"{v:.2f}" for v in rep.get("score_abs_diff", [])))
        moved = ", ".join(f"{v:.2f}" for v in pert.get("score_abs_diff", []))
        std = "-" if row["seed_std"] is None else f"{row['seed_std']:.2f}"
        parts.append(f"{name}: the same run again gives {same}; with {nz['perturbed_threads']} threads instead of "
                     f"{nz['threads']} (the same arithmetic summed in another order) the score moves by {moved} mIoU "
                     f"(std of the score over the calibration seeds: {std})")
    return ["**Noise** (`--noise`: the calibration seeds' baselines at the chosen size, run again): " + "; ".join(parts)
            + ". A change of rounding alone moves a run's score by about as much as a new seed, or more: no single run "
              "means anything on its own, only differences over many seeds do (the t-intervals below are over seeds; a "
              "rounding change is one more source of the spread they measure, and one perturbed rerun per baseline "
              "does not say how large it is in general)."]


_SCOPE = ("This is a small from-scratch benchmark on CPU (a narrow model on the embedded `shapes` data), not a "
          "replication of the paper's VOC and Cityscapes results, which need a pretrained ResNet-101 DeepLabV3+.")


RECORDED = ROOT / "tests" / "recorded_2d.pt"


def pinned_code() -> Optional[str]:
    """The training code whose 2-D outputs ``tests/test_recorded.py`` holds today's code to, bit for bit."""
    import torch
    return torch.load(RECORDED)["code"] if RECORDED.exists() else None


def pinned_note(prov: dict) -> str:
    """What the README says when the package changed after the study but its 2-D computation did not."""
    if prov.get("code") != pinned_code():
        return ""
    return (f" The code changed after the study, but not its 2-D computation: "
            f"`tests/test_recorded.py`, run by CI, holds the library's plans, entropies and losses, and two training "
            f"steps of the example for every mixer, bit for bit equal to outputs recorded from `{prov.get('code')}` "
            "(on the CPU ISA they were recorded on; within 1e-5 elsewhere), so these runs stand for this version.")


def report(results: Optional[dict], calibration: Optional[dict] = None, total_runs: int = len(SETTINGS) * len(STUDY_SEEDS)) -> str:
    """The README's ablation section, every number read from ``results`` (``ablation.json``) and
    ``calibration`` (``ablation-calibration.json``); findings only from intervals that exclude 0.
    ``results=None``: the study has not started."""
    cal = calibration or {}
    lines = ["Three phases, each resumable: `python benchmarks/ablation.py --calibrate` (1, the run size, on the "
             "baselines alone: supervised, UniMatch + CutMix, FixMatch + CutMix, never EntropyMix or SPEEDLoss, so the "
             "benchmark is not tuned toward the methods it tests), `--select` (2, SPEEDLoss's weight from the grid "
             "`SPEED_WEIGHTS` declared in the code; the paper gives none, and nothing else gets a tuning budget), "
             "`--noise` (reruns where only rounding changes), then `--jobs 2` (3, the study, on held-out seeds); "
             "`--report` prints this section from the JSON files. The seed "
             "fixes the labeled set, the data order and every random draw, the same for every setting, so settings are "
             f"compared paired by seed. A run's score is the mean validation mIoU of the last {SCORE_EPOCHS} epochs; a paired difference is reported with its "
             "95% t-interval over seeds and Holm's correction over all comparisons, and one whose interval contains 0 "
             "is \"not distinguishable on this benchmark\", whatever its mean.", ""]
    if cal.get("candidates"):
        lines += calibration_report(cal) + [""]
    if cal.get("selection"):
        lines += selection_report(cal["selection"]) + [""]
    if cal.get("noise"):
        lines += noise_report(cal["noise"]) + [""]
    if not results:
        lines += [f"**3. The study** (held-out seeds {', '.join(map(str, STUDY_SEEDS))}; {len(SETTINGS)} settings: "
                  f"{', '.join(SETTINGS)}): **not started**."]
        chosen, sel = cal.get("candidates", {}).get(cal.get("chosen") or ""), cal.get("selection") or {}
        if chosen and sel.get("chosen") is not None:
            minutes = chosen["checks"]["minutes_per_run"]
            speed = statistics.mean(row["minutes"] for row in sel["table"].values())
            total = sum(minutes["supervised"] if n == "supervised" else speed if "+speed" in n else minutes[BASELINE]
                        for n in SETTINGS) * len(STUDY_SEEDS)
            lines[-1] += (f" Phases 1 and 2 have fixed its run size and weight; `python benchmarks/ablation.py --jobs 2` "
                          f"runs its {len(SETTINGS) * len(STUDY_SEEDS)} runs in about {total / 60 / 2:.1f} hours of two "
                          "runs at a time on this machine (the calibration's minutes per run; the selection's for "
                          "SPEEDLoss settings).")
        return "\n".join(lines + ["", _SCOPE])
    prov, table = results.get("provenance") or {}, results["table"]
    trained = results.get("machines") or {machine(prov): results["finished_runs"]}
    on = (next(iter(trained)) if len(trained) == 1 else
          ", ".join(f"{m} for {k} run{'s' * (k != 1)}" for m, k in trained.items()) + "; a seed's runs on two machines differ by "
          "rounding only, a perturbation the noise measurement above sizes")
    diffs = [d for d in results["differences"] if d["low"] is not None]
    done = results["finished_runs"]
    status = ("all runs finished" if done >= total_runs else
              f"{done} of {total_runs} runs finished; the study resumes where it stopped, in this checkout or a new one "
              "(each finished run is kept in `benchmarks/results/ablation-runs/`)")
    lines += [f"**3. The study** (held-out seeds {', '.join(map(str, results['seeds']))}, never used by phases 1 and 2; "
              f"train.py flags `{' '.join(results['extra_args'])}`; training code `{prov.get('code')}`, torch "
              f"{prov.get('torch')}, one thread per run, on {on}). "
              f"**Status: {status}.**{pinned_note(prov)}", "", markdown(results), "",
              "![paired differences](benchmarks/results/ablation.png)", ""]
    gains = convergence(table) if table else {}
    if gains:
        met = sum(g < CONVERGED for g in gains.values())
        lines += [f"Convergence (gain per epoch over the last quarter of a setting's mean curve; criterion: below "
                  f"{CONVERGED} mIoU per epoch, which phase 1 checked on the baselines' calibration seeds): "
                  f"met by {met} of {len(gains)} settings; "
                  + ", ".join(f"{n} {g:+.2f}" for n, g in gains.items()) + "."
                  + ("" if met == len(gains) else
                     " The others were still learning when the schedule ended; it was fixed by phase 1 and not "
                     "changed after, so the study compares settings at an equal training budget, not at convergence.")
                  + " `benchmarks/results/ablation-curves.png` plots the curves."]
    mixed = {n: row["mixing"] for n, row in table.items() if row.get("mixing")}
    if mixed:
        parts = []
        for n, runs in mixed.items():
            last = [epochs[-1] for epochs in runs.values()]  # final epoch, per seed: one record per stream
            share = [statistics.mean(r[s]["view_share"][0] for r in last) for s in range(len(last[0]))]
            whole = [statistics.mean(r[s]["whole_sample_share"] for r in last) for s in range(len(last[0]))]
            parts.append(f"{n} " + ", ".join(f"stream {s + 1}: {100 * a:.0f}% from the strong view itself, "
                                              f"{100 * w:.0f}% of samples whole" for s, (a, w) in enumerate(zip(share, whole))))
        lines[-1] += (" What the mixers did in the final epoch (mean over seeds; per epoch in the JSON): "
                      + "; ".join(parts) + ".")
    by_pair = {(d["setting"], d["reference"]): d for d in diffs}
    answers = [f"- {q} {_answer(by_pair[k])}: {_ci(by_pair[k])}." for k, q in QUESTIONS.items() if k in by_pair]
    distinct = {frozenset((d["setting"], d["reference"])) for d in diffs}
    if answers:
        lines += ["", f"**What this benchmark shows** (Holm over all {len(distinct)} distinct comparisons):", ""] + answers
    key = by_pair.get(("unimatch+entropymix", BASELINE))
    if key:
        half = (key["high"] - key["low"]) / 2
        lines += ["", f"The 95% half-width of EntropyMix vs CutMix is {half:.2f} mIoU over {key['n']} seeds (goal: at most "
                  f"{HALF_WIDTH})" + ("." if half <= HALF_WIDTH else
                                      f"; at this spread about {math.ceil(key['n'] * (half / HALF_WIDTH) ** 2)} seeds "
                                      "would reach it.")]
    return "\n".join(lines + ["", _SCOPE])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phase = ap.add_mutually_exclusive_group()
    phase.add_argument("--calibrate", action="store_true", help="phase 1: every candidate's baselines")
    phase.add_argument("--select", action="store_true", help="phase 2: SPEEDLoss's weight on the calibration seeds")
    phase.add_argument("--noise", action="store_true", help="the baselines again: same threads, then other threads")
    phase.add_argument("--report", action="store_true",
                       help="print the README section from the saved JSON files; trains nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the calibration seeds for --calibrate / --select / --noise, else the held-out ones")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), help="with --calibrate: these only")
    ap.add_argument("--score-epochs", type=int, default=SCORE_EPOCHS,
                    help="a run's score: mean mIoU of its last N epochs")
    ap.add_argument("--out-root", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--results", type=Path, default=RESULTS / "ablation.json")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run of the study")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores / jobs threads)")
    args, extra = ap.parse_known_args(argv)  # anything else goes to train.py (e.g. --epochs 20)
    calibration = _calibration(args)
    if args.report:
        results = _load(args.results) or None
        print(report(results, _load(calibration)))
        here = provenance()
        study = results.get("provenance") or {} if results else {}
        pinned = study.get("code") == pinned_code() and study.get("torch") == here["torch"]
        if results and not same_computation(study, here) and not pinned:  # the README would describe other code
            print(f"ablation.py: the study in {args.results} was trained with {results.get('provenance')}, this "
                  f"checkout is {here}: rerun `python benchmarks/ablation.py --jobs 2` before quoting it",
                  file=sys.stderr)
        return {}
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    prov = provenance()
    if args.calibrate or args.select or args.noise:
        args.seeds = args.seeds or CALIBRATION_SEEDS
        out = (calibrate if args.calibrate else select if args.select else noise)(args, prov, threads)
        key = "candidates" if args.calibrate else "selection" if args.select else "noise"
        print(json.dumps({c: v["checks"] for c, v in out[key].items()} if args.calibrate else out[key], indent=1)[:4000])
        return out
    args.seeds = args.seeds or STUDY_SEEDS
    extra = (QUICK if args.quick else STUDY) + extra  # later flags win: extra args override the study size
    jobs = [(n, SETTINGS[n], s, extra, threads) for s in args.seeds for n in args.settings]  # seed-major
    summary: dict = {}

    def save(done) -> None:
        nonlocal summary
        summary = summarise(done, args.settings, args.seeds, args.score_epochs)
        computation = {k: prov[k] for k in ("code", "torch")}  # the CPU is each run's own: see "machines"
        out = {"extra_args": extra, "provenance": computation, "threads": threads, "seeds": args.seeds,
               "score": f"mean validation mIoU of the last {args.score_epochs} epochs", **summary,
               "finished_runs": len(done), "machines": machines(done.values())}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=1))
        # the plots follow the JSON, so a partial study's README shows what it reads
        plot(summary, args.results.with_suffix(".png"), args.results.with_name(args.results.stem + "-curves.png"))

    done = run_all(jobs, args.out_root / "study", args.results.with_name(args.results.stem + "-runs"), prov,
                   args.jobs, save, any_machine=True)
    save(done)
    print("\n" + markdown(summary))
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
        mean = mean_curve(row)
        ax.plot(range(1, len(mean) + 1), mean, label=f"{name} ({len(row['curves'])} seeds)", lw=1.2, color=colours(i),
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
