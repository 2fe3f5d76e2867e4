"""Accuracy evidence on the embedded dataset, in three phases, paired by seed, with intervals.

The command line; the study itself is the package ``benchmarks/study/`` (``design``: settings,
seeds, candidates, criteria; ``stats``: t-intervals, p-values, Holm's correction; ``runs``;
``phases``; ``report``).

    python benchmarks/ablation.py --calibrate --jobs 2  # 1. the run size, chosen on the baselines only
    python benchmarks/ablation.py --select --jobs 2     # 2. SPEEDLoss's weight, on calibration seeds
    python benchmarks/ablation.py --noise --jobs 2      # how far a run moves when only rounding changes
    python benchmarks/ablation.py --jobs 2              # 3. the focused study, on held-out seeds
    python benchmarks/ablation.py --quick               # a smoke run (tiny data, a few iterations)
    python benchmarks/ablation.py --report              # the README section, from the JSON files
    python benchmarks/ablation.py --dataset streets --jobs 2   # the second dataset's study (its own JSON)
    python benchmarks/ablation.py --dataset streets --report   # its README section, beside the shapes verdicts
    python benchmarks/ablation.py --select-share --jobs 2      # how much versus where: EntropyMix's share, on
                                                               # streets' calibration seeds (issue 39)
    python benchmarks/ablation.py --confirm-share --dataset streets --jobs 2   # then at the chosen share, on
    python benchmarks/ablation.py --confirm-share --dataset shapes --jobs 2    # seeds never used (issue 39)
    python benchmarks/ablation.py --share-report               # the share study's README section

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
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import design  # noqa: E402
from study.design import *  # noqa: E402,F401,F403  (ablation.SETTINGS and the rest, as before the split)
from study.phases import (_calibration, calibrate, checks, confirm_share, noise, select, select_share,  # noqa: E402,F401
                          summarise)
from study.report import (calibration_report, markdown, noise_report, pinned_code, pinned_codes, pinned_note, plot,  # noqa: E402,F401
                          report, selection_report, share_report_from, share_rows, side_by_side,
                          streets_report)
from study.runs import (RESULTS, ROOT, TRAIN, _load, machine, machines, provenance, run, run_all,  # noqa: E402,F401
                        same_computation, score)
from study.stats import (T95, convergence, holm, mean_curve, paired, predicted_half_width, slope, t95,  # noqa: E402,F401
                         t_test_p)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phase = ap.add_mutually_exclusive_group()
    phase.add_argument("--calibrate", action="store_true", help="phase 1: every candidate's baselines (of --dataset)")
    phase.add_argument("--select", action="store_true", help="phase 2: SPEEDLoss's weight on the calibration seeds")
    phase.add_argument("--select-share", action="store_true",
                       help="EntropyMix's share against random placement and CutMix, on streets' calibration seeds")
    phase.add_argument("--confirm-share", action="store_true",
                       help="the share study's confirmation at the selected share, on --dataset's held-out seeds")
    phase.add_argument("--share-report", action="store_true",
                       help="print the share study's README section from its saved JSON files; trains nothing")
    phase.add_argument("--noise", action="store_true", help="the baselines again: same threads, then other threads")
    phase.add_argument("--report", action="store_true",
                       help="print the README section from the saved JSON files; trains nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the calibration seeds for --calibrate / --select / --noise, else the held-out ones")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                    help="default: every setting of the dataset's study")
    ap.add_argument("--candidates", nargs="+", choices=list(design.CANDIDATES), help="with --calibrate: these only")
    ap.add_argument("--score-epochs", type=int, default=SCORE_EPOCHS,
                    help="a run's score: mean mIoU of its last N epochs")
    ap.add_argument("--out-root", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--results", type=Path, default=RESULTS / "ablation.json")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run of the study")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores / jobs threads)")
    ap.add_argument("--share-selection", type=Path, default=None,
                    help="with --confirm-share: the selection's JSON (default benchmarks/results/share-selection.json)")
    ap.add_argument("--dataset", choices=["shapes", "streets"], default="shapes",
                    help="streets: its own JSON (ablation-streets*.json), seeds and candidates; phase 2 is not rerun")
    args, extra = ap.parse_known_args(argv)  # anything else goes to train.py (e.g. --epochs 20)
    if args.share_report:
        print(share_report_from(RESULTS, provenance()["code"]))
        return {}
    if args.select_share:  # a phase of the streets benchmark with its own JSON
        if args.results == RESULTS / "ablation.json":
            args.results = RESULTS / "share-selection.json"
        args.seeds = args.seeds or design.SHARE_SELECTION_SEEDS
        args.extra = (QUICK if args.quick else []) + extra
        out = select_share(args, provenance(), max(1, (os.cpu_count() or 1) // args.jobs))
        print(markdown({"table": out["table"], "differences": out["differences"]}))
        print(f"chosen share: {out['chosen_share']} ({out['finished_runs']} runs finished)")
        return out
    if args.confirm_share:
        selection = _load(RESULTS / "share-selection.json") if args.share_selection is None else _load(args.share_selection)
        if args.results == RESULTS / "ablation.json":
            args.results = RESULTS / f"share-confirmation-{args.dataset}.json"
        args.seeds = args.seeds or (design.SHARE_STREETS_SEEDS if args.dataset == "streets" else design.SHARE_SHAPES_SEEDS)
        args.extra = (QUICK if args.quick else []) + extra
        out = confirm_share(args, provenance(), max(1, (os.cpu_count() or 1) // args.jobs), selection)
        print(markdown({"table": out["table"], "differences": out["differences"]}))
        print(f"EntropyMix at share {out['share']:g} beats UniMatch + CutMix: {out['entropymix_beats_cutmix']} "
              f"({out['finished_runs']} runs finished)")
        return out
    if args.dataset == "streets":
        if args.select:
            ap.error("--dataset streets: SPEEDLoss keeps the weight selected on shapes; --select does not run again")
        if args.results == RESULTS / "ablation.json":
            args.results = RESULTS / "ablation-streets.json"
        args.candidates = args.candidates or list(design.STREETS_CANDIDATES)
        args.seeds = args.seeds or (design.STREETS_CALIBRATION_SEEDS if args.calibrate or args.noise
                                    else design.STREETS_STUDY_SEEDS)
        args.settings, size, study_dir = args.settings or list(design.STREETS_SETTINGS), design.STREETS_STUDY, "study-streets"
        quick = QUICK + design.STREETS
    else:
        args.candidates = args.candidates or [c for c in design.CANDIDATES if c not in design.STREETS_CANDIDATES]
        args.settings, size, study_dir, quick = args.settings or list(SETTINGS), design.STUDY, "study", QUICK
    calibration = _calibration(args)
    if args.report and args.dataset == "streets":  # with the shapes study beside it, for the side-by-side table
        print(streets_report(_load(args.results) or None, _load(calibration), _load(RESULTS / "ablation.json") or None,
                             provenance()["code"], share_rows(args.results.parent)))
        return {}
    if args.report:
        results = _load(args.results) or None
        print(report(results, _load(calibration)))
        here = provenance()
        study = results.get("provenance") or {} if results else {}
        pinned = study.get("code") in pinned_codes() and study.get("torch") == here["torch"]
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
    extra = (quick if args.quick else size) + extra  # later flags win: extra args override the study size
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

    done = run_all(jobs, args.out_root / study_dir, args.results.with_name(args.results.stem + "-runs"), prov,
                   args.jobs, save, any_machine=True)
    save(done)
    print("\n" + markdown(summary))
    print(f"\nwrote {args.results} and its plots")
    return summary["table"]


if __name__ == "__main__":
    main()
