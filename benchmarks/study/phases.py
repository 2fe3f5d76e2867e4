"""The three phases: calibration on the baselines only, SPEEDLoss's weight on calibration seeds,
reruns where only rounding changes; and the summary of finished runs, paired by seed."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from . import design
from .design import (BASELINE, CALIBRATION_SETTINGS, COMPARISONS, CONVERGED, FIXMATCH, HALF_WIDTH, NOISE_SETTINGS,
                     POSITIVE, SELECT_SETTING, SETTINGS, SPEED, SPEED_WEIGHTS, STUDY_SEEDS)
from .runs import _load, machines, run_all, score
from .stats import convergence, holm, paired, predicted_half_width


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
        ious = {s: [h["iou"] for h in runs[s]["history"][-last:]] for s in sorted(scores)
                if all("iou" in h for h in runs[s]["history"][-last:])}
        if ious and all(r.get("classes") for r in runs.values()):  # per class, over the same last epochs
            classes = runs[min(ious)]["classes"]
            table[name]["class_iou"] = {c: [statistics.mean(e[k] for e in ious[s]) for s in sorted(ious)]
                                        for k, c in enumerate(classes)}
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


def checks(summary: dict, study_seeds: int, half_width_goal: float = HALF_WIDTH) -> dict:
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
           "half_width_ok": half is not None and half <= half_width_goal,
           "minutes_per_run": {name: row["minutes"] for name, row in table.items()}}
    out["passes"] = out["converged"] and out["positive_control_holds"] and out["half_width_ok"]
    return out


def _calibration(args) -> Path:
    """Where phases 1 and 2 and the noise reruns write (beside the study's JSON); their runs are kept
    under ``<stem>-runs/``."""
    return args.results.with_name(args.results.stem + "-calibration.json")


def calibrate(args, prov: dict, threads: int) -> dict:
    """Phase 1: every candidate's baselines on the calibration seeds; the criteria and the pick."""
    path = _calibration(args)
    old = _load(path)
    names = args.candidates or list(design.CANDIDATES)
    goal = design.STREETS_HALF_WIDTH if getattr(args, "dataset", "shapes") == "streets" else HALF_WIDTH
    jobs = [(n, flags, s, design.CANDIDATES[c][0], threads) for c in names for s in args.seeds
            for n, flags in CALIBRATION_SETTINGS.items()]
    per: dict = {c: {} for c in names}

    def save(done) -> dict:
        cands = dict(_load(path).get("candidates", old.get("candidates", {})))
        for c in names:
            if per[c]:
                summary = summarise(per[c], CALIBRATION_SETTINGS, args.seeds, args.score_epochs, [(BASELINE, "supervised")])
                seeds = [s for s in args.seeds if all((n, s) in per[c] for n in CALIBRATION_SETTINGS)]
                cands[c] = {"args": design.CANDIDATES[c][0], "why": design.CANDIDATES[c][1], "seeds": seeds, **summary,
                            "checks": checks(summary, len(STUDY_SEEDS), goal)}
        passing = [c for c, v in cands.items() if v["checks"]["passes"]]
        chosen = min(passing, key=lambda c: cands[c]["checks"]["minutes_per_run"].get(BASELINE, 0), default=None)
        out = {**{k: v for k, v in _load(path).items() if k in ("selection", "noise")}, "provenance": prov,
               "score": f"mean validation mIoU of the last {args.score_epochs} epochs",
               "criteria": {"converged": f"least-squares gain of the mean curve over the last quarter of the schedule "
                                         f"below {CONVERGED} mIoU per epoch, supervised and {BASELINE}",
                            "positive_control": f"{BASELINE} - supervised at least {POSITIVE} mIoU, its 95% paired "
                                                f"interval excluding 0",
                            "half_width": f"95% half-width predicted for {len(STUDY_SEEDS)} seeds from the spread of "
                                          f"the paired {FIXMATCH} - {BASELINE} differences, at most {goal} mIoU",
                            "choice": "the cheapest passing candidate (minutes per UniMatch run)"},
               "candidates": cands, "chosen": chosen}
        path.write_text(json.dumps(out, indent=1))
        return out

    for c in names:  # candidate by candidate, each one's runs in parallel
        run_all([j for j in jobs if j[3] == design.CANDIDATES[c][0]], args.out_root / "calibration" / c,
                path.with_name(path.stem + "-runs") / c, prov, args.jobs,
                lambda done, c=c: (per[c].update(done), save(done)))
    return save({})


def select(args, prov: dict, threads: int) -> dict:
    """Phase 2: SPEEDLoss's weight, UniMatch + EntropyMix + SPEEDLoss on the calibration seeds at
    the chosen run size; the best mean score wins."""
    path = _calibration(args)
    base = SETTINGS[SELECT_SETTING][:-len(SPEED)] + ["--speed"]
    names = {f"{SELECT_SETTING}-w{w:g}": base + ["--speed-weight", str(w)] for w in SPEED_WEIGHTS}
    jobs = [(n, flags, s, design.STUDY, threads) for s in args.seeds for n, flags in names.items()]

    def save(done) -> dict:
        summary = summarise(done, names, args.seeds, args.score_epochs, [])
        means = {n: row["mean"] for n, row in summary["table"].items() if len(row["seeds"]) == len(args.seeds)}
        best = max(means, key=means.get) if len(means) == len(names) else None  # only from the whole grid
        out = _load(path)
        out["selection"] = {"setting": SELECT_SETTING, "weights": list(SPEED_WEIGHTS), "seeds": args.seeds,
                            "args": design.STUDY, "provenance": prov, "table": summary["table"],
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
    jobs = [(n + suffix, SETTINGS[n], s, design.STUDY, t) for s in args.seeds for n in NOISE_SETTINGS
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
        out["noise"] = {"args": design.STUDY, "provenance": prov, "threads": threads, "perturbed_threads": other,
                        "score_epochs": args.score_epochs, "settings": rows}
        path.write_text(json.dumps(out, indent=1))
        return out

    run_all(jobs, out_root, kept, prov, args.jobs, save)
    return _load(path)


def _chosen_name() -> str:
    return next(c for c, (flags, _) in design.CANDIDATES.items() if flags == design.STUDY)


def select_share(args, prov: dict, threads: int) -> dict:
    """How much versus where, selection (issue 39): EntropyMix and random grid placement at each of
    ``SHARES``, and UniMatch + CutMix, on `streets`' calibration seeds at its study size; the share
    by ``SHARE_RULE``, fixed before the runs. Seed-major, so each finished seed pairs every setting."""
    path = args.results
    names = design.SHARE_SETTINGS
    size = design.STREETS_STUDY + list(getattr(args, "extra", []))  # later flags win (a smoke run's sizes)
    jobs = [(n, flags, s, size, threads) for s in args.seeds for n, flags in names.items()]
    comparisons = [design.share_names(s) for s in design.SHARES]

    def save(done) -> dict:
        summary = summarise(done, names, args.seeds, args.score_epochs, comparisons)
        table = summary["table"]
        complete = all(len(table.get(n, {}).get("seeds", [])) == len(args.seeds) for n in names)
        means = design.share_means(table)
        chosen = None
        if complete:
            best = max(means.values())
            chosen = min(s for s, m in means.items() if m >= best - design.SHARE_TIE)
        out = {"phase": "share selection (issue 39)", "seeds": args.seeds, "args": size,
               "settings": {n: f for n, f in names.items()}, "provenance": prov, "threads": threads,
               "score": f"mean validation mIoU of the last {args.score_epochs} epochs",
               "rule": design.SHARE_RULE, "default_rule": design.DEFAULT_RULE, **summary,
               "finished_runs": len(done), "chosen_share": chosen}
        path.write_text(json.dumps(out, indent=1))
        return out

    # any_machine: a kept run of the same code and torch counts on any CPU, so the phase can resume on
    # another machine (a frozen worktree of the code it started with; see the closing note of issue 39)
    run_all(jobs, args.out_root / "share-selection", path.with_name(path.stem + "-runs"), prov, args.jobs, save,
            any_machine=True)
    return _load(path)


def confirm_share(args, prov: dict, threads: int, selection: dict) -> dict:
    """The share study's confirmation (issue 39) on seeds never used, with the final code: the
    settings of ``share_confirmation_settings`` at the share the selection chose, paired by seed,
    Holm within the study; once complete, whether EntropyMix at that share beats UniMatch + CutMix
    (Holm-adjusted p < 0.05, interval above 0), the input of ``DEFAULT_RULE``."""
    share = selection.get("chosen_share")
    if share is None:
        raise SystemExit("the share selection has chosen no share yet (benchmarks/results/share-selection.json): "
                         "finish `python benchmarks/ablation.py --select-share` first")
    names = design.share_confirmation_settings(share, args.dataset)
    size = (design.STREETS_STUDY if args.dataset == "streets" else design.STUDY) + list(getattr(args, "extra", []))
    jobs = [(n, flags, s, size, threads) for s in args.seeds for n, flags in names.items()]  # seed-major
    em = design.share_names(share)[0]

    def save(done) -> dict:
        summary = summarise(done, names, args.seeds, args.score_epochs,
                            [c for c in design.share_confirmation_comparisons(share) if c[0] in names and c[1] in names])
        complete = all(len(summary["table"].get(n, {}).get("seeds", [])) == len(args.seeds) for n in names)
        vs = next((d for d in summary["differences"] if (d["setting"], d["reference"]) == (em, BASELINE)), None)
        beats = None
        if complete and vs is not None:
            p_holm = vs.get("p_holm")
            beats = bool(vs["low"] is not None and vs["low"] > 0 and p_holm is not None and p_holm < 0.05)
        out = {"phase": f"share confirmation on {args.dataset} (issue 39)", "share": share, "seeds": args.seeds,
               "args": size, "settings": names, "provenance": {k: prov[k] for k in ("code", "torch")},
               "threads": threads, "score": f"mean validation mIoU of the last {args.score_epochs} epochs",
               "default_rule": design.DEFAULT_RULE, **summary, "finished_runs": len(done),
               "machines": machines(done.values()), "entropymix_beats_cutmix": beats}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(out, indent=1))
        return out

    done = run_all(jobs, args.out_root / f"share-confirmation-{args.dataset}", args.results.with_name(
        args.results.stem + "-runs"), prov, args.jobs, save, any_machine=True)
    return save(done)
