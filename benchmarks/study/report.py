"""The README's section, every number read from the JSON; and the study's plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional

from . import design
from .design import (BASELINE, CALIBRATION_SETTINGS, CONVERGED, FIXMATCH, HALF_WIDTH, SCORE_EPOCHS, SETTINGS,
                     STUDY_SEEDS)
from .runs import ROOT, machine
from .stats import convergence, mean_curve, paired


def markdown(summary: dict, verdicts: bool = True) -> str:
    """The study's table; ``verdicts=False`` while seeds are missing: the intervals are interim and the
    verdict column reads ``pending``."""
    def verdict(d: Optional[dict]) -> str:
        return (d or {}).get("verdict", "-") if verdicts else ("pending" if d else "-")

    lines = ["| setting | seeds | score mean | std | vs UniMatch + CutMix (95% CI) | verdict | min / run |",
             "|---|---:|---:|---:|---|---|---:|"]
    by_pair = {(d["setting"], d["reference"]): d for d in summary["differences"]}
    for name, row in summary["table"].items():
        d = by_pair.get((name, BASELINE))
        ci = "-" if not d or d["low"] is None else f"{d['mean']:+.2f} ({d['low']:+.2f}, {d['high']:+.2f})"
        std = f"{row['std']:.2f}" if len(row["seeds"]) > 1 else "-"
        lines.append(f"| {name} | {len(row['seeds'])} | {row['mean']:.2f} | {std} | {ci} | "
                     f"{verdict(d)} | {row['minutes']:.1f} |")
    others = [d for d in summary["differences"] if d["reference"] != BASELINE and d["low"] is not None]
    if others:
        lines += ["", "| comparison | seeds | mean difference (95% CI) | verdict |", "|---|---:|---|---|"]
    for d in others:
        lines.append(f"| {d['setting']} - {d['reference']} | {d['n']} | {d['mean']:+.2f} ({d['low']:+.2f}, "
                     f"{d['high']:+.2f}) | {verdict(d)} |")
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


def pinned_codes() -> dict:
    """Training codes known to give the recorded 2-D outputs: the recorded one, and each code that
    ``tests/test_recorded.py`` passed on while it was the checkout's (``verified`` in the file, with why)."""
    import torch
    if not RECORDED.exists():
        return {}
    saved = torch.load(RECORDED)
    return {saved["code"]: "recorded", **saved.get("verified", {})}


def pinned_note(prov: dict, current: Optional[str] = None) -> str:
    """What the README says when the package changed after the study (``current``: this checkout's
    code, when known) but its 2-D computation did not."""
    code = prov.get("code")
    if code not in pinned_codes() or code == current:
        return ""
    if code != pinned_code():
        return (f" The code changed after the study, but not its 2-D computation: `tests/test_recorded.py`, run by "
                f"CI, holds the library's plans, entropies and losses, and two training steps of the example for every "
                f"mixer, bit for bit equal to outputs recorded from `{pinned_code()}`, which the study's `{code}` was "
                "checked to reproduce when it was current (on the CPU ISA they were recorded on; within 1e-5 "
                "elsewhere), so these runs stand for this version.")
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


# The questions both studies answer, in the README's side-by-side table: (setting, reference, question).
SIDE_BY_SIDE = [
    ("unimatch+entropymix", BASELINE, "EntropyMix vs CutMix (in UniMatch)"),
    ("unimatch+entropymix", "unimatch+grid-random", "entropy selection vs random grid patches"),
    ("unimatch+entropymix+speed", "unimatch+entropymix", "SPEEDLoss with EntropyMix"),
    ("unimatch+cutmix+speed", BASELINE, "SPEEDLoss with CutMix"),
    (BASELINE, "supervised", "positive control: UniMatch + CutMix vs supervised"),
]


def _short(d: dict) -> str:
    """A difference's verdict in a word or two: Holm-adjusted p < 0.05 decides."""
    if d["p_holm"] < 0.05:
        return "better" if d["mean"] > 0 else "worse"
    if d["low"] > 0 or d["high"] < 0:
        return "not after Holm"  # the uncorrected interval excludes 0; the family-wise test does not
    return "not distinguishable"


def _cell(d: Optional[dict]) -> str:
    if not d or d["low"] is None:
        return "-"
    return f"{d['mean']:+.2f} ({d['low']:+.2f}, {d['high']:+.2f}), {d['n']} seeds: {_short(d)}"


def share_questions(share: float) -> list:
    """The share study's rows of the side-by-side table (setting, reference, question, run on
    `shapes` too): its confirmation compares the first on both datasets, the others on `streets` only."""
    em, grid = design.share_names(share)
    return [(em, BASELINE, f"EntropyMix at share {share:g} vs CutMix (in UniMatch)", True),
            (em, grid, f"entropy selection vs random grid patches, both at share {share:g}", False),
            (em + "+speed", em, f"SPEEDLoss with EntropyMix at share {share:g}", False)]


def _pairs(results: Optional[dict]) -> dict:
    return {(d["setting"], d["reference"]): d for d in (results or {}).get("differences", []) if d["low"] is not None}


def side_by_side(shapes: Optional[dict], streets: Optional[dict], streets_seeds: int,
                 share: Optional[tuple] = None) -> list:
    """Both studies' answers to each question of ``SIDE_BY_SIDE``, and whether each verdict carries
    over from `shapes` to `streets` (open while the streets study has fewer than ``streets_seeds``).
    ``share``: ``(chosen share, shapes confirmation, streets confirmation)`` (issue 39) adds the share
    study's rows, read from its confirmation JSON, each open until that study has all its seeds."""
    rows = [(a, b, q, True, _pairs(shapes), _pairs(streets), None, streets_seeds) for a, b, q in SIDE_BY_SIDE]
    if share is not None and share[0] is not None:
        value, on_shapes, on_streets = share
        rows += [(a, b, q, both, _pairs(on_shapes), _pairs(on_streets), len(design.SHARE_SHAPES_SEEDS),
                  len(design.SHARE_STREETS_SEEDS)) for a, b, q, both in share_questions(value)]
    lines = ["| question | `shapes`: difference (95% CI) | `streets`: difference (95% CI) | carries over? |",
             "|---|---|---|---|"]
    counts = {"yes": 0, "no": 0, "open": 0, "streets": 0}
    for a, b, question, both, p1, p2, n1, n2 in rows:
        d1, d2 = (p1.get((a, b)) if both else None), p2.get((a, b))
        if d2 is None or d2["n"] < n2 or both and (d1 is None or n1 is not None and d1["n"] < n1):
            short = [f"`{k}` has {d['n']} of {n} seeds" for k, d, n in (("shapes", d1, n1), ("streets", d2, n2))
                     if d is not None and n is not None and d["n"] < n]
            carry = "open" + (": " + ", ".join(short) if short else "")
            counts["open"] += 1
        elif not both:
            carry = "`streets` only (not run on `shapes`)"
            counts["streets"] += 1
        elif _short(d1) == _short(d2):
            carry = "yes" + (" (neither distinguishable)" if _short(d1) == "not distinguishable" else "")
            counts["yes"] += 1
        else:
            carry = f"**no**: {_short(d1)} on `shapes`, {_short(d2)} on `streets`"
            counts["no"] += 1
        lines.append(f"| {question} | {_cell(d1) if both else 'not run'} | {_cell(d2)} | {carry} |")
    compared = len(rows) - counts["streets"]
    lines += ["", f"Of {compared} verdicts, {counts['yes']} carry over to `streets`, {counts['no']} do "
              f"not, and {counts['open']} {'is' if counts['open'] == 1 else 'are'} open"
              + (f"; {counts['streets']} {'is' if counts['streets'] == 1 else 'are'} on `streets` only"
                 if counts["streets"] else "") + ". \"better\" and \"worse\" need a Holm-adjusted p below 0.05 within "
              "each study (\"not after Holm\": the uncorrected interval excludes 0, the corrected test does not); a "
              "verdict that does not carry over is a finding about the method, reported as plainly as one that does."]
    return lines


def rare_classes(results: dict, classes=None, pairs=None) -> list:
    """Per-class IoU of the rare classes (mean over seeds of each run's last epochs), per setting,
    and the paired EntropyMix - CutMix difference per class (95% t-intervals, uncorrected: exploratory)."""
    classes = classes or design.STREETS_RARE
    pairs = pairs or [("unimatch+entropymix", BASELINE), ("unimatch+entropymix", "unimatch+grid-random")]
    table = {n: row for n, row in results["table"].items() if row.get("class_iou")}
    if not table:
        return []
    lines = ["| setting | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for n, row in table.items():
        lines.append(f"| {n} | " + " | ".join(f"{statistics.mean(row['class_iou'][c]):.1f}" for c in classes) + " |")
    for a, b in pairs:
        if a in table and b in table:
            common = [s for s in table[a]["seeds"] if s in table[b]["seeds"]]
            cells = []
            for c in classes:
                va = [table[a]["class_iou"][c][table[a]["seeds"].index(s)] for s in common]
                vb = [table[b]["class_iou"][c][table[b]["seeds"].index(s)] for s in common]
                d = paired(va, vb)
                cells.append("-" if d["low"] is None else f"{d['mean']:+.1f} ({d['low']:+.1f}, {d['high']:+.1f})")
            lines.append(f"| {a} - {b} ({len(common)} seed{'s' * (len(common) != 1)}) | " + " | ".join(cells) + " |")
    return lines


def _calibration_code_note(cal: dict, results: Optional[dict]) -> str:
    """Whether the calibration's choice stands for the study when the two ran on different training code."""
    code, study = (cal.get("provenance") or {}).get("code"), ((results or {}).get("provenance") or {}).get("code")
    if not code or not study or code == study:
        return ""
    known = pinned_codes()
    if code in known and study in known:
        return (f" The calibration's training code `{code}` is not the study's `{study}`, but both give the 2-D outputs "
                "that `tests/test_recorded.py` holds, bit for bit, so the run size chosen stands for the study.")
    return (f" The calibration's training code `{code}` is not the study's `{study}`, and no test shows their 2-D "
            "computation equal: the run size may not suit the study's code.")


def _mixing_line(table: dict) -> str:
    """What the mixers did in the final epoch: the share of pixels each stream kept from the strong view
    itself, mean over seeds (per epoch in the JSON); "" when no run recorded it."""
    parts = []
    for n, row in table.items():
        if row.get("mixing"):
            last = [epochs[-1] for epochs in row["mixing"].values()]
            kept = [statistics.mean(r[s]["view_share"][0] for r in last) for s in range(len(last[0]))]
            parts.append(f"{n} " + ", ".join(f"stream {s + 1} {100 * a:.0f}%" for s, a in enumerate(kept)))
    return ("Share of pixels the mixers took from the strong view itself in the final epoch (mean over seeds; per "
            "epoch in the JSON): " + "; ".join(parts) + ".") if parts else ""


def streets_report(results: Optional[dict], calibration: Optional[dict], shapes: Optional[dict],
                   current: Optional[str] = None, share: Optional[tuple] = None) -> str:
    """The README's `streets` study, every number read from its JSON (``ablation-streets.json``), its
    calibration's and the `shapes` study's (for the side-by-side table); ``current``: this checkout's
    training code (a study of other code says whether its 2-D computation changed since); ``share``: the
    share study's rows for the side-by-side table (see ``side_by_side``)."""
    cal, seeds = calibration or {}, design.STREETS_STUDY_SEEDS
    total = len(design.STREETS_SETTINGS) * len(seeds)
    chosen = cal.get("chosen")
    lines = [f"Calibrated on the baselines only (`python benchmarks/ablation.py --dataset streets --calibrate --jobs 2`; "
             f"seeds {', '.join(map(str, design.STREETS_CALIBRATION_SEEDS))}; "
             "`benchmarks/results/ablation-streets-calibration.json` holds each candidate's checks): "
             + (f"run size `{chosen}`, flags `{' '.join(cal['candidates'][chosen]['args'])}`" if chosen else "no run size yet")
             + ". SPEEDLoss keeps the weight selected on `shapes`; nothing was tuned on `streets`."]
    if chosen:
        ch = cal["candidates"][chosen]["checks"]
        pos = ch["positive_control"]
        lines[-1] += (f" Its checks: UniMatch + CutMix - supervised {pos['mean']:+.2f} ({pos['low']:+.2f}, "
                      f"{pos['high']:+.2f}) over {pos['n']} seeds, predicted half-width "
                      f"{ch['predicted_half_width']:.2f} mIoU at {len(seeds)} seeds (goal: at most "
                      f"{design.STREETS_HALF_WIDTH}), baselines converged.")
    lines[-1] += _calibration_code_note(cal, results)
    if not results:
        return "\n".join(lines + ["", f"The held-out study (seeds {seeds[0]}-{seeds[-1]}, {total} runs) has not started: "
                                       "no accuracy figure on `streets` exists yet."])
    prov, done = results.get("provenance") or {}, results["finished_runs"]
    trained = results.get("machines") or {machine(prov): done}
    on = (next(iter(trained)) if len(trained) == 1 else
          ", ".join(f"{m} for {k} run{'s' * (k != 1)}" for m, k in trained.items()) + "; a seed's runs on two machines "
          "differ by rounding only")
    status = ("all runs finished" if done >= total else
              f"{done} of {total} runs finished; `python benchmarks/ablation.py --dataset streets --jobs 2` resumes it "
              "(finished runs are kept in `benchmarks/results/ablation-streets-runs/`)")
    lines += ["", f"**The `streets` study** (held-out seeds {', '.join(map(str, results['seeds']))}; train.py flags "
              f"`{' '.join(results['extra_args'])}`; training code `{prov.get('code')}`, torch {prov.get('torch')}, one "
              f"thread per run, on {on}). **Status: {status}.**{pinned_note(prov, current)}", "",
              "**Both datasets side by side** (paired differences in mIoU, 95% t-intervals over seeds):", ""]
    lines += side_by_side(shapes, results, len(seeds), share)
    lines += ["", "The `streets` study in full:", "", markdown(results)]
    if any(d["low"] is not None for d in results["differences"]):  # the plot exists once a difference does
        lines += ["", "![streets paired differences](benchmarks/results/ablation-streets.png)"]
    rare = rare_classes(results)
    if rare:
        lines += ["", "Does entropy mixing help small things or only large regions? IoU of the rare classes (mean over "
                  f"seeds of each run's last {SCORE_EPOCHS} epochs), and paired differences per class with uncorrected "
                  "95% intervals (exploratory: outside Holm's family):", ""] + rare
    mixing = _mixing_line(results["table"])
    if mixing:
        lines += ["", mixing]
    return "\n".join(lines)


def _json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def share_results(results: Path) -> dict:
    """The share study's JSON in ``results`` (``benchmarks/results``), and the first studies' that its
    recommendation falls back on; a file not written yet is None."""
    return {"selection": _json(results / "share-selection.json"),
            "streets": _json(results / "share-confirmation-streets.json"),
            "shapes": _json(results / "share-confirmation-shapes.json"),
            "earlier": {"shapes": _json(results / "ablation.json"), "streets": _json(results / "ablation-streets.json")}}


def share_rows(results: Path) -> Optional[tuple]:
    """``(chosen share, shapes confirmation, streets confirmation)`` for ``side_by_side``; None before
    the selection chose a share."""
    r = share_results(results)
    share = (r["selection"] or {}).get("chosen_share")
    return None if share is None else (share, r["shapes"], r["streets"])


def _complete(conf: Optional[dict], seeds: list) -> bool:
    return bool(conf) and all(len(row["seeds"]) == len(seeds) for row in conf["table"].values()) and \
        len(conf["table"]) == len(conf["settings"])


def _selection_table(sel: dict) -> list:
    """The selection's runs, without verdicts: calibration seeds choose a share, they test nothing."""
    by_pair = _pairs(sel)
    lines = ["| setting | seeds | score per seed | mean | vs UniMatch + CutMix: mean (95% CI, uncorrected) |",
             "|---|---:|---|---:|---|"]
    for name, row in sel["table"].items():
        d = by_pair.get((name, BASELINE))
        ci = "-" if d is None else f"{d['mean']:+.2f} ({d['low']:+.2f}, {d['high']:+.2f})"
        lines.append(f"| {name} | {len(row['seeds'])} | {', '.join(f'{v:.2f}' for v in row['score'])} | "
                     f"{row['mean']:.2f} | {ci} |")
    return lines


def _recommend(share: float, conf: dict, earlier: Optional[dict]) -> str:
    """Which mixer to use on one kind of data, read from its confirmation and (falling back) its first
    study: EntropyMix at the share if it beat CutMix there (naming its default too when that beat CutMix
    in the first study), else EntropyMix's own selection if that beat CutMix in the first study, else
    CutMix."""
    em = design.share_names(share)[0]
    d = _pairs(conf).get((em, BASELINE))
    first = _pairs(earlier).get(("unimatch+entropymix", BASELINE))
    first_better = first is not None and _short(first) == "better"
    if d is not None and _short(d) == "better":
        if first_better:  # both shares beat CutMix, on different seeds
            return (f"EntropyMix, which beats CutMix both with `share={share:g}` ({_cell(d)}) and, in the first "
                    f"study on other seeds, with its own per-cell selection (`share=None`, the default; "
                    f"{_cell(first)}); the two shares were never trained on the same seeds, so this study does "
                    f"not rank them")
        return f"EntropyMix with `share={share:g}` ({_cell(d)} against CutMix)"
    at_share = f"at share {share:g} it is {_short(d)} against CutMix ({_cell(d)})" if d else ""
    if first_better:
        return (f"EntropyMix with its own per-cell selection (`share=None`, the default), better than CutMix in the "
                f"first study ({_cell(first)}); {at_share}")
    first_text = f"; at its default it was {_short(first)} in the first study ({_cell(first)})" if first else ""
    return f"CutMix, which EntropyMix does not beat ({at_share}{first_text})"


def share_report(selection: Optional[dict], streets: Optional[dict] = None, shapes: Optional[dict] = None,
                 earlier: Optional[dict] = None, current: Optional[str] = None) -> str:
    """The README's section on the share study (issue 39), every number read from its JSON: the
    selection (``share-selection.json``), the confirmation on each dataset
    (``share-confirmation-{streets,shapes}.json``) and, for the recommendation, the first studies
    (``earlier``: ``{"shapes": ablation.json, "streets": ablation-streets.json}``); ``current``: this
    checkout's training code (a study of other code says whether its 2-D computation changed since).
    While runs are missing it states the design and how far the runs are, and no verdict."""
    from .design import (DEFAULT_RULE, SHARE_RULE, SHARE_SELECTION_SEEDS, SHARE_SETTINGS, SHARE_SHAPES_SEEDS,
                         SHARE_STREETS_SEEDS, SHARES, share_confirmation_settings)
    earlier = earlier or {}
    seeds = (selection or {}).get("seeds", SHARE_SELECTION_SEEDS)
    total = len(SHARE_SETTINGS) * len(seeds)
    finished = (selection or {}).get("finished_runs", 0)
    chosen = (selection or {}).get("chosen_share")
    confs = {"streets": (streets, SHARE_STREETS_SEEDS), "shapes": (shapes, SHARE_SHAPES_SEEDS)}
    done = {k: chosen is not None and _complete(c, s) and c.get("share") == chosen for k, (c, s) in confs.items()}
    if chosen is None:
        status = (f"{finished} of {total} selection runs have finished (`benchmarks/results/share-selection.json`); "
                  "no share is chosen and no verdict is drawn until every run has.")
    else:
        counts = []
        for k, (c, s) in confs.items():
            n = len(share_confirmation_settings(chosen, k)) * len(s)
            counts.append(f"`{k}` {(c or {}).get('finished_runs', 0) if (c or {}).get('share') == chosen else 0} of {n}")
        means = design.share_means(selection.get("table", {}))
        why = ""
        if len(means) == len(SHARES):
            best = max(means, key=means.get)
            why = (f" (EntropyMix's mean scores: {', '.join(f'share {s:g} {m:.2f}' for s, m in means.items())}; "
                   + (f"the best, share {best:g}" if best == chosen else
                      f"share {chosen:g} is within {design.SHARE_TIE:g} mIoU of the best, share {best:g}, and smaller")
                   + ")")
        status = (f"all {total} selection runs have finished; the rule chose share {chosen:g}{why}. Confirmation runs "
                  f"finished: {', '.join(counts)}"
                  + ("." if all(done.values()) else
                     " (`python benchmarks/ablation.py --confirm-share --dataset streets --jobs 2`, then `--dataset "
                     "shapes`, resume them); no verdict is drawn on a dataset until all its runs have."))
    lines = [f"**How much versus where{'' if all(done.values()) else ' (in progress)'}.** EntropyMix decides where "
             f"the other view goes and, unless given `share=`, how much of each image it takes (about half under "
             f"`\"max\"`), where CutMix pastes about a tenth. To tell the two apart, `python benchmarks/ablation.py "
             f"--select-share --jobs 2` trains, on `streets`' calibration seeds {', '.join(map(str, seeds))} only, "
             f"UniMatch + CutMix and UniMatch + EntropyMix and random grid placement at shares "
             f"{', '.join(f'{s:g}' for s in SHARES)} (SPEEDLoss off). Its rule, fixed before the first run: "
             f"{SHARE_RULE}. The confirmation follows on seeds never used (`streets` "
             f"{SHARE_STREETS_SEEDS[0]}-{SHARE_STREETS_SEEDS[-1]}, `shapes` {SHARE_SHAPES_SEEDS[0]}-"
             f"{SHARE_SHAPES_SEEDS[-1]}), and then the defaults, by a rule also fixed now: {DEFAULT_RULE}. "
             f"Status: {status} (`python benchmarks/ablation.py --share-report` prints this section from the JSON.)"]
    if selection and selection.get("table"):
        prov = selection.get("provenance") or {}
        lines += ["", f"Selection (calibration seeds; training code `{prov.get('code')}`, torch {prov.get('torch')}, "
                  f"one thread per run; the intervals are over at most {len(seeds)} seeds and decide nothing)."
                  f"{pinned_note(prov, current)}", ""]
        lines += _selection_table(selection)
        mixing = _mixing_line(selection["table"])
        lines += ["", mixing] if mixing else []
    for name, (conf, conf_seeds) in confs.items():
        if chosen is None or not conf or conf.get("share") != chosen or not conf.get("table"):
            continue
        prov = conf.get("provenance") or {}
        trained = conf.get("machines") or {}
        on = ", ".join(f"{m} for {k} run{'s' * (k != 1)}" for m, k in trained.items())
        lines += ["", f"Confirmation on `{name}` (held-out seeds {conf_seeds[0]}-{conf_seeds[-1]}; training code "
                  f"`{prov.get('code')}`, torch {prov.get('torch')}, one thread per run, on {on}; "
                  f"{'all runs finished' if done[name] else str(conf['finished_runs']) + ' runs finished, no verdict yet: the intervals are interim'})."
                  f"{pinned_note(prov, current)}", "", markdown(conf, verdicts=done[name])]
        mixing = _mixing_line(conf["table"])
        lines += ["", mixing] if mixing else []
        em, grid = design.share_names(chosen)
        rare = rare_classes(conf, pairs=[(em, BASELINE), (em, grid)]) if name == "streets" else []
        if rare:
            lines += ["", f"IoU of `streets`' rare classes (mean over seeds of each run's last {SCORE_EPOCHS} epochs; "
                      "paired differences with uncorrected 95% intervals, exploratory):", ""] + rare
    if chosen is None:
        return "\n".join(lines)
    em, grid = design.share_names(chosen)
    answers = []
    if done["streets"]:
        p = _pairs(streets)
        for (a, b), q in [((em, grid), "Does entropy placement beat random placement at equal share"),
                          ((em, BASELINE), "Does EntropyMix at that share beat CutMix"),
                          ((em + "+speed", em), "Does SPEEDLoss help EntropyMix at that share"),
                          ((em + "+speed", BASELINE), "Does EntropyMix at that share with SPEEDLoss beat CutMix")]:
            if (a, b) in p:
                answers.append(f"- {q} on `streets`? {_answer(p[a, b])}: {_ci(p[a, b])}.")
    if done["shapes"]:
        d = _pairs(shapes).get((em, BASELINE))
        if d is not None:
            answers.append(f"- Does EntropyMix at that share beat CutMix on `shapes`? {_answer(d)}: {_ci(d)}.")
    if answers:
        lines += ["", f"Answers at share {chosen:g} (Holm within each dataset's confirmation):", ""] + answers
    if all(done.values()):
        if streets.get("entropymix_beats_cutmix") and shapes.get("entropymix_beats_cutmix"):
            lines += ["", f"**Default.** EntropyMix at share {chosen:g} beats CutMix on both datasets, so by the rule "
                      f"above `--share {chosen:g}` is the example's default."]
        else:
            lines += ["", "**Which to use.** EntropyMix at that share does not beat CutMix on both datasets, so by the "
                      "rule above the example keeps `--share` unset. On object-centric data like `shapes`: "
                      f"{_recommend(chosen, shapes, earlier.get('shapes'))}. On driving scenes like `streets`: "
                      f"{_recommend(chosen, streets, earlier.get('streets'))}."]
    return "\n".join(lines)


def share_report_from(results: Path, current: Optional[str] = None) -> str:
    """``share_report`` of the JSON in ``results`` (what the README holds, verbatim)."""
    r = share_results(results)
    return share_report(r["selection"], r["streets"], r["shapes"], r["earlier"], current)
