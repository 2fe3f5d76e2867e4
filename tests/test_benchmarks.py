"""Smoke runs of the benchmarks (they assert nothing about time: timing belongs to benchmarks/)."""

import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402
from study import design  # noqa: E402  (the study's constants, read through the module: patchable)
import speed  # noqa: E402


def test_speed_quick_writes_tables_and_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = speed.main(["--quick", "--no-compile", "--out", str(out)])  # first calls run with --no-compile too
    saved = json.loads(out.read_text())
    assert saved["quick"] and {r["method"] for r in saved["mix"]} >= {
        speed.CUTMIX_ALL, speed.APPLY, speed.DEFAULT, speed.UNCHECKED}
    assert all(r["ms"] > 0 for r in result["mix"]) and [r["method"] for r in saved["relation"]] == ["gram", "naive"]
    import step_overhead
    assert {r["what"] for r in saved["step"]} == {step_overhead.STEP, step_overhead.MIX_CUTMIX,
                                                  step_overhead.MIX_DEFAULT, step_overhead.MIX_FULL, step_overhead.SPEED,
                                                  step_overhead.TEACHER, step_overhead.WHOLE, step_overhead.MIX_HALF,
                                                  step_overhead.TEACHER_HALF, step_overhead.WHOLE_HALF}
    step = {r["what"]: r for r in saved["step"]}
    differences = (step_overhead.TEACHER, step_overhead.WHOLE)  # hold a difference of two timings: may dip below 0
    assert step[step_overhead.WHOLE_HALF]["ms"] == pytest.approx(step[step_overhead.MIX_HALF]["ms"]
                                                                 + step[step_overhead.TEACHER_HALF]["ms"])
    assert all(r["share"] > 0 for w, r in step.items() if w not in differences)
    assert "teacher" in step_overhead.TEACHER and "teacher" in step_overhead.WHOLE  # the extra forward, counted
    assert step[step_overhead.WHOLE]["ms"] == pytest.approx(step[step_overhead.MIX_DEFAULT]["ms"] + step[step_overhead.TEACHER]["ms"])
    eager_first = [r for r in saved["compile"] if r.get("mode") == "eager"]
    assert len(eager_first) == 2 and {r["compiler"] for r in eager_first} == {True, False}
    volume = [r for r in saved["volume"] if "ratio" in r]
    assert [r["method"] for r in volume] == [speed.BCP_HAND, speed.BCP_OURS, speed.CUTMIX_3D, speed.ENTROPYMIX_3D]
    assert all(r["ms"] > 0 for r in saved["volume"]) and any("naive_gib" in r for r in saved["volume"])
    printed = capsys.readouterr().out
    assert "| method |" in printed and "Relation term" in printed and "UniMatch training step" in printed
    assert "Volumes: one copy-paste direction" in printed


def test_ablation_quick_is_resumable_paired_and_saves_as_it_grows(tmp_path, capsys):
    results = tmp_path / "ablation.json"
    args = ["--quick", "--seeds", "0", "1", "--settings", "supervised", "unimatch+cutmix", "unimatch+classmix",
            "--score-epochs", "2", "--out-root", str(tmp_path / "runs"), "--results", str(results), "--jobs", "2"]
    table = ablation.main(args)
    assert set(table) == {"supervised", "unimatch+cutmix", "unimatch+classmix"}
    assert all(len(row["score"]) == 2 and len(row["curves"]["0"]) == 2 for row in table.values())
    # What the mixers did, per seed, epoch and stream: each view's mean share, samples taken whole.
    assert "mixing" not in table["supervised"]
    for name in ("unimatch+cutmix", "unimatch+classmix"):
        epochs = table[name]["mixing"]["1"]
        assert len(epochs) == 2 and all(len(streams) == 2 for streams in epochs)
        assert all(sum(m["view_share"]) == pytest.approx(1.0) and 0 <= m["whole_sample_share"] <= 1
                   for streams in epochs for m in streams)
    saved = json.loads(results.read_text())
    diff = next(d for d in saved["differences"] if d["setting"] == "unimatch+classmix")
    assert diff["reference"] == "unimatch+cutmix" and diff["n"] == 2 and diff["low"] <= diff["mean"] <= diff["high"]
    expected = [table["unimatch+classmix"]["score"][i] - table["unimatch+cutmix"]["score"][i] for i in range(2)]
    assert diff["differences"] == expected and "verdict" in diff
    assert (tmp_path / "ablation.png").is_file() and (tmp_path / "ablation-curves.png").is_file()
    assert "vs UniMatch + CutMix (95% CI)" in capsys.readouterr().out
    again = ablation.main(args)  # every run is finished: nothing is trained again
    assert "train.py" not in capsys.readouterr().out and again == table
    assert saved["provenance"] == {k: ablation.provenance()[k] for k in ("code", "torch")}
    # A new checkout has only the kept copies: those of this code and torch count, from any machine
    # (each keeping its own), another code's are retrained.
    shutil.rmtree(tmp_path / "runs")
    moved = tmp_path / "ablation-runs" / "supervised-s0.json"
    elsewhere = {**ablation.provenance(), "cpu": "AVX512", "cpu_model": "another CPU"}
    moved.write_text(json.dumps({**json.loads(moved.read_text()), "provenance": elsewhere}))
    assert ablation.main(args) == table and "train.py" not in capsys.readouterr().out
    assert json.loads(moved.read_text())["provenance"] == elsewhere
    here = ablation.machine(ablation.provenance())
    assert json.loads(results.read_text())["machines"] == {here: 5, "another CPU (AVX512)": 1}
    stale = tmp_path / "ablation-runs" / "unimatch+cutmix-s1.json"
    other = {"code": "0" * 16, "torch": "x", "cpu": "x"}
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "provenance": other}))
    retrained = ablation.main(args)  # deterministic: the retrained run scores the same, bit for bit
    assert {k: r["curves"] for k, r in retrained.items()} == {k: r["curves"] for k, r in table.items()}
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 1 and "unimatch+cutmix-s1" in trained[0]
    assert json.loads(stale.read_text())["provenance"] == ablation.provenance()
    capsys.readouterr()
    ablation.main(args + ["--report"])  # a study of this checkout: no warning
    out, err = capsys.readouterr()
    assert "rerun" not in err and "another CPU (AVX512) for 1 run;" in out
    results.write_text(json.dumps({**json.loads(results.read_text()), "provenance": other}))
    ablation.main(args + ["--report"])  # a study of other code: the report says so on stderr
    assert "rerun `python benchmarks/ablation.py --jobs 2`" in capsys.readouterr().err
    ablation.main(args + ["--report"])  # the README section, from the JSON alone
    text = capsys.readouterr().out
    assert "examples/train.py" not in text and "| setting |" in text and f"6 of {len(ablation.SETTINGS) * len(ablation.STUDY_SEEDS)} runs finished" in text
    convergence = next(line for line in text.splitlines() if line.startswith("Convergence ("))
    table = json.loads(results.read_text())["table"]  # every setting's last-quarter gain, and how many met it
    assert f" of {len(table)} settings; " in convergence and all(f" {name} " in convergence for name in table)
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and "mIoU (95% CI" in line]
    assert len(verdicts) == 2  # ClassMix vs CutMix, CutMix vs supervised: each once, under its finding


def test_calibration_selection_and_noise_phases_write_their_verdicts(tmp_path, monkeypatch, capsys):
    """The three phases end to end at the smoke size: calibration on baselines only, the weight
    picked from the declared grid, the rounding-only reruns, and the report reading all of them."""
    monkeypatch.setattr(design, "CANDIDATES", {"tiny": (ablation.QUICK, "the smoke size")})
    monkeypatch.setattr(design, "STUDY", ablation.QUICK)
    results = tmp_path / "ablation.json"
    common = ["--out-root", str(tmp_path / "runs"), "--results", str(results), "--score-epochs", "1", "--jobs", "2"]
    cal = ablation.main(["--calibrate", "--seeds", "0", "1"] + common)
    tiny = cal["candidates"]["tiny"]
    assert set(tiny["table"]) == set(ablation.CALIBRATION_SETTINGS)  # no EntropyMix, no SPEEDLoss
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 6 and not any("entropymix" in line or "--speed " in line for line in trained)
    checks = tiny["checks"]
    assert checks["passes"] == (checks["converged"] and checks["positive_control_holds"] and checks["half_width_ok"])
    assert cal["chosen"] == ("tiny" if checks["passes"] else None)
    sel = ablation.main(["--select", "--seeds", "0"] + common)["selection"]
    assert sel["chosen"] in ablation.SPEED_WEIGHTS and len(sel["table"]) == len(ablation.SPEED_WEIGHTS)
    best = max(sel["table"].values(), key=lambda row: row["mean"])
    assert best is list(sel["table"].values())[ablation.SPEED_WEIGHTS.index(sel["chosen"])]
    capsys.readouterr()
    nz = ablation.main(["--noise", "--seeds", "0"] + common)["noise"]
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 2 * len(ablation.NOISE_SETTINGS)  # the base runs are the calibration's, reused
    for row in nz["settings"].values():
        assert row["repeat"]["identical_curves"] == [True] and row["repeat"]["score_abs_diff"] == [0.0]
        assert len(row[f"threads{nz['perturbed_threads']}"]["score_abs_diff"]) == 1
    saved = json.loads(results.with_name("ablation-calibration.json").read_text())
    assert {"candidates", "chosen", "selection", "noise"} <= set(saved)
    ablation.main(["--quick", "--seeds", "0", "1", "--settings", "supervised", "unimatch+cutmix"] + common)
    capsys.readouterr()
    ablation.main(["--report"] + common)
    text = capsys.readouterr().out
    assert "**1. Calibration**" in text and "**2. SPEEDLoss's weight**" in text and "**Noise**" in text
    assert "| tiny |" in text and f"`--speed-weight {sel['chosen']:g}`" in text


_DRAWS = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from data import shapes_splits
from model import DeepLabV3Plus
torch.manual_seed(1003)
splits = shapes_splits(8, 16, 4, 32, seed=1003)
torch.save({"data": [t for pair in splits for t in pair], "weights": list(DeepLabV3Plus(6, width=8).state_dict().values()),
            "cpu": torch.backends.cpu.get_cpu_capability()}, sys.argv[1])
"""


def test_a_seed_draws_the_same_data_and_weights_on_every_cpu_isa(tmp_path):
    """Why a study may span machines (``ablation.same_computation``): under the portable kernels
    (``ATEN_CPU_CAPABILITY=default``) and this CPU's vector ones, a seed picks the same labeled
    set and labels exactly, and the same images and initial weights up to rounding."""
    import subprocess

    import torch
    out = {}
    for isa in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env.update({"ATEN_CPU_CAPABILITY": isa} if isa else {})
        subprocess.run([sys.executable, "-c", _DRAWS, str(tmp_path / f"{isa}.pt"), str(BENCH.parent / "examples")],
                       check=True, env=env)
        out[isa] = torch.load(tmp_path / f"{isa}.pt")
    portable, native = out["default"], out[None]
    assert portable["cpu"] == "DEFAULT"
    for a, b in zip(portable["data"] + portable["weights"], native["data"] + native["weights"]):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)


def test_calibration_criteria():
    assert ablation.slope([0, 0, 0, 0, 1, 2, 3, 4]) == pytest.approx(1.0)  # the last quarter: 3, 4
    assert ablation.slope([5.0] * 12) == 0.0
    half = ablation.predicted_half_width([1.0, 2.0, 3.0], 8)
    assert half == pytest.approx(2.365 * 1.0 / math.sqrt(8))


def test_study_constants_are_the_calibration_and_selection_choices():
    """The study runs at the calibrated size with the selected weight, on seeds neither phase used;
    no SPEEDLoss setting runs before its weight is selected."""
    saved = json.loads((BENCH / "results" / "ablation-calibration.json").read_text())
    study = ablation._load(BENCH / "results" / "ablation.json") or {"table": {}}  # {}: not started
    assert saved["chosen"] and ablation.STUDY == ablation.CANDIDATES[saved["chosen"]][0]
    if study["table"]:
        assert study["extra_args"] == ablation.STUDY and study["seeds"] == ablation.STUDY_SEEDS
        assert study["provenance"]["code"] == saved["provenance"]["code"]  # calibrated on the code it tests
    used = {s for c in saved["candidates"].values() for s in c["seeds"]} | set(saved.get("selection", {}).get("seeds", []))
    assert not used & set(ablation.STUDY_SEEDS) and len(ablation.STUDY_SEEDS) >= 8
    for name in ("unimatch+entropymix+speed", "unimatch+cutmix+speed"):
        assert ablation.SETTINGS[name][-2:] == ["--speed-weight", str(ablation.SPEED_WEIGHT)]
    if saved.get("selection", {}).get("chosen") is not None:
        assert ablation.SPEED_WEIGHT == saved["selection"]["chosen"]
    else:
        assert not [n for n in study["table"] if "+speed" in n]


def test_t_test_p_is_students_t_and_holm_steps_down():
    for df, t in ablation.T95.items():  # the tabled 97.5% quantiles give p = 0.05
        assert ablation.t_test_p(t, df) == pytest.approx(0.05, abs=1e-3)
    assert ablation.t_test_p(1.0, 1) == pytest.approx(0.5) and ablation.t_test_p(0.0, 4) == pytest.approx(1.0)
    assert ablation.t_test_p(-2.0, 6) == ablation.t_test_p(2.0, 6)
    diffs = [{"setting": s, "reference": r, "p": p} for s, r, p in
             [("a", "z", 0.01), ("b", "z", 0.04), ("c", "z", 0.03), ("z", "a", 0.01)]]  # the last mirrors the first
    ablation.holm(diffs)  # 3 distinct comparisons: 0.01 x 3, then max(0.03, 0.03 x 2), then max(0.06, 0.04 x 1)
    assert [d["p_holm"] for d in diffs] == pytest.approx([0.03, 0.06, 0.06, 0.03])


def test_paired_interval_is_the_t_interval():
    out = ablation.paired([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])  # differences 2, 3, 2
    half = 4.303 * statistics.stdev([2, 3, 2]) / math.sqrt(3)
    assert out["mean"] == pytest.approx(7 / 3) and out["low"] == pytest.approx(7 / 3 - half)
    assert out["verdict"] == "better" and ablation.paired([1.0, 2.0], [2.0, 1.0])["verdict"].startswith("not")
    assert out["p"] == pytest.approx(ablation.t_test_p((7 / 3) / (half / 4.303), 2))


def test_readme_benchmark_sections_are_generated_from_the_saved_json():
    """Every number the README reads is the JSON beside it: both sections are the reports, verbatim."""
    readme = (BENCH.parent / "README.md").read_text()
    results = BENCH / "results"
    assert speed.report(json.loads((results / "speed-cpu.json").read_text())) in readme
    import traffic
    assert traffic.report(json.loads((results / "traffic.json").read_text())) in readme  # ops and bytes
    from study.report import share_report_from, share_rows
    assert share_report_from(results, ablation.provenance()["code"]) in readme  # the share study
    assert speed.cuda_report_from(results) in readme  # the GPU check's figures
    study = ablation.report(ablation._load(results / "ablation.json") or None,
                            json.loads((results / "ablation-calibration.json").read_text()))
    assert study in readme
    streets = ablation.streets_report(ablation._load(results / "ablation-streets.json") or None,
                                      ablation._load(results / "ablation-streets-calibration.json"),
                                      ablation._load(results / "ablation.json"), ablation.provenance()["code"],
                                      share_rows(results))  # the side-by-side table with the share study's rows
    assert streets in readme and ("Both datasets side by side" in streets or "has not started" in streets)


def test_gpu_check_runs_its_cpu_parts(tmp_path):
    """The GPU check's CPU mode, end to end: every step ok and the summary written."""
    import gpu_check
    summary = gpu_check.main(["--device", "cpu", "--out", str(tmp_path)])
    assert [s["step"] for s in summary["steps"]] == ["tests", "speed", "step", "train", "train-torchrun", "train-volumes"]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    assert "tests collected" in summary["steps"][0]["tail"][-1]  # the CUDA selection, collected, not run
    saved = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert saved["speed"] and saved["step"] and saved["device"] == "cpu"


def test_streets_calibration_has_its_own_files_seeds_and_goal(tmp_path, monkeypatch, capsys):
    """`--dataset streets`: its own JSON beside the study's, its candidates only, the baselines only,
    the 1.5 mIoU half-width goal; phase 2 is not rerun (the weight selected on shapes is kept)."""
    tiny = {"streets-tiny": (design.STREETS + ablation.QUICK, "the smoke size")}
    monkeypatch.setattr(design, "STREETS_CANDIDATES", tiny)
    monkeypatch.setattr(design, "CANDIDATES", {**design.CANDIDATES, **tiny})
    results = tmp_path / "ablation.json"
    common = ["--dataset", "streets", "--out-root", str(tmp_path / "runs"), "--results", str(results), "--jobs", "2",
              "--score-epochs", "1"]
    out = ablation.main(["--calibrate", "--seeds", "0", "1"] + common)
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 6 and all("--dataset streets" in line for line in trained)
    assert not any("entropymix" in line or "--speed " in line for line in trained)
    assert set(out["candidates"]) == {"streets-tiny"} and "at most 1.5 mIoU" in out["criteria"]["half_width"]
    assert (tmp_path / "ablation-calibration.json").is_file() and design.STREETS_HALF_WIDTH == 1.5
    with pytest.raises(SystemExit):
        ablation.main(["--select"] + common)
    assert not set(design.STREETS_STUDY_SEEDS) & (set(design.STREETS_CALIBRATION_SEEDS) | set(ablation.STUDY_SEEDS)
                                                    | set(ablation.CALIBRATION_SEEDS))


def test_streets_calibration_chose_on_the_baselines_alone():
    """The streets run size was chosen by phase 1 on its calibration seeds, from baseline runs only,
    and the README names that choice."""
    saved = json.loads((BENCH / "results" / "ablation-streets-calibration.json").read_text())
    chosen = saved["chosen"]
    assert chosen in design.STREETS_CANDIDATES and saved["candidates"][chosen]["checks"]["passes"]
    assert saved["candidates"][chosen]["args"] == design.STREETS_CANDIDATES[chosen][0]
    kept = list((BENCH / "results" / "ablation-streets-calibration-runs").glob("*/*.json"))
    assert kept and all(p.stem.rsplit("-s", 1)[0] in ablation.CALIBRATION_SETTINGS for p in kept)
    assert all(int(p.stem.rsplit("-s", 1)[1]) in design.STREETS_CALIBRATION_SEEDS for p in kept)
    assert "half_width" in saved["criteria"] and "1.5" in saved["criteria"]["half_width"]
    assert f"`{chosen}`" in (BENCH.parent / "README.md").read_text()
    assert design.STREETS_STUDY == saved["candidates"][chosen]["args"]  # the study runs at the chosen size


def test_streets_study_runs_its_six_settings_with_class_iou_and_mixing(tmp_path, capsys):
    """`--dataset streets` (the study, smoke size): the six settings of its design on the given seeds,
    its own JSON with per-class IoU and mixing statistics, and a report beside the shapes verdicts."""
    results = tmp_path / "ablation-streets.json"
    args = ["--dataset", "streets", "--quick", "--seeds", "0", "--jobs", "2", "--score-epochs", "1",
            "--out-root", str(tmp_path / "runs"), "--results", str(results)]
    table = ablation.main(args)
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 6 and all("--dataset streets" in line for line in trained)
    assert list(table) == design.STREETS_SETTINGS
    saved = json.loads(results.read_text())
    for name, row in saved["table"].items():
        assert set(row["class_iou"]) >= set(design.STREETS_RARE) and all(len(v) == 1 for v in row["class_iou"].values())
        assert ("mixing" in row) == (name != "supervised")
    ablation.main(args + ["--report"])
    text = capsys.readouterr().out
    assert "Both datasets side by side" in text and "1 of 48 runs finished" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(" | open |")]
    assert len(rows) == 5  # one seed of eight: every verdict is still open
    assert "| pole | sign | person | car |" in text


def _diff(setting, reference, mean, low, high, p_holm, n=8):
    return {"setting": setting, "reference": reference, "mean": mean, "low": low, "high": high, "p_holm": p_holm,
            "n": n}


def test_side_by_side_says_which_verdicts_carry_over():
    """A verdict carries over when both studies give the same one (Holm-adjusted); a study short of its
    seeds leaves it open; an interval that excludes 0 only before Holm is not a verdict of "better"."""
    from study import report
    questions = [(a, b) for a, b, _ in report.SIDE_BY_SIDE]
    shapes = {"differences": [_diff(*questions[0], 4.8, 3.1, 6.6, 0.001), _diff(*questions[1], 4.5, 2.7, 6.3, 0.002),
                              _diff(*questions[2], 3.2, 0.5, 5.9, 0.06), _diff(*questions[3], 0.3, -1.0, 1.6, 0.9)]}
    streets = {"differences": [_diff(*questions[0], 2.0, 0.9, 3.1, 0.01), _diff(*questions[1], -2.0, -3.0, -1.0, 0.01),
                               _diff(*questions[2], 0.1, -1.0, 1.2, 0.8), _diff(*questions[3], 0.2, -0.5, 0.9, 0.9),
                               _diff(*questions[4], 8.0, 5.0, 11.0, 0.001, n=3)]}
    lines = report.side_by_side(shapes, streets, 8)
    rows = {line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1][:-2] for line in lines if line.startswith("| ")}
    names = [q for _, _, q in report.SIDE_BY_SIDE]
    assert rows[names[0]] == "yes"
    assert rows[names[1]] == "**no**: better on `shapes`, worse on `streets`"
    assert rows[names[2]] == "**no**: not after Holm on `shapes`, not distinguishable on `streets`"
    assert rows[names[3]] == "yes (neither distinguishable)"
    assert rows[names[4]] == "open: `streets` has 3 of 8 seeds"
    assert "2 carry over to `streets`, 2 do not, and 1 is open" in lines[-1]


def test_side_by_side_gains_the_share_studys_rows_open_until_each_confirmation_has_its_seeds():
    """The share rows read the confirmation JSON: EntropyMix at the share vs CutMix on both datasets
    (open while either has fewer seeds than its design), the others on `streets` only."""
    from study import report
    em, grid = "unimatch+entropymix-share0.25", "unimatch+grid-random-share0.25"
    streets = {"differences": [_diff(em, "unimatch+cutmix", 1.0, 0.5, 1.5, 0.01), _diff(em, grid, 0.2, -0.5, 0.9, 0.6),
                               _diff(em + "+speed", em, 1.2, 0.4, 2.0, 0.02)]}
    shapes = {"differences": [_diff(em, "unimatch+cutmix", 3.0, 1.0, 5.0, 0.01, n=5)]}
    lines = report.side_by_side(None, None, 8, (0.25, shapes, streets))
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert rows["EntropyMix at share 0.25 vs CutMix (in UniMatch)"].endswith("| open: `shapes` has 5 of 8 seeds |")
    assert "| not run | +0.20 (-0.50, +0.90), 8 seeds: not distinguishable | `streets` only" in \
        rows["entropy selection vs random grid patches, both at share 0.25"]
    assert "+1.20 (+0.40, +2.00), 8 seeds: better" in rows["SPEEDLoss with EntropyMix at share 0.25"]
    assert "Of 6 verdicts, 0 carry over to `streets`, 0 do not, and 6 are open; 2 are on `streets` only" in lines[-1]
    shapes["differences"][0]["n"] = 8
    lines = report.side_by_side(None, None, 8, (0.25, shapes, streets))
    assert "| yes |" in next(line for line in lines if line.startswith("| EntropyMix at share 0.25"))
    assert report.side_by_side(None, None, 8, None) == report.side_by_side(None, None, 8, (None, None, None))


def _confirmation(share, names, seeds, diffs, beats):
    """A confirmation's JSON as ``confirm_share`` writes it, with only what the report reads."""
    return {"share": share, "settings": {n: [] for n in names}, "finished_runs": len(names) * len(seeds),
            "provenance": {"code": "c0de", "torch": "2.13.0+cpu"}, "machines": {"AMD EPYC (AVX512)": 8},
            "table": {n: {"seeds": list(seeds), "score": [60.0] * len(seeds), "mean": 60.0, "std": 0.0,
                          "minutes": 9.0} for n in names},
            "differences": diffs, "entropymix_beats_cutmix": beats}


def test_share_report_draws_no_verdict_until_every_run_and_then_follows_the_default_rule():
    """The share study's section: the design and how far it is while runs are missing, no answer before a
    dataset's confirmation has all its seeds; then the answers with intervals, and the defaults by
    ``DEFAULT_RULE``: the share becomes the default only if it beats CutMix on both datasets, else the
    section names a mixer per kind of data (falling back on the first studies' EntropyMix verdict)."""
    from study import report
    assert "no share is chosen and no verdict is drawn" in report.share_report(None)
    em, grid, base = "unimatch+entropymix-share0.25", "unimatch+grid-random-share0.25", "unimatch+cutmix"
    selection = {"seeds": design.SHARE_SELECTION_SEEDS, "finished_runs": 28, "chosen_share": 0.25, "table": {}}
    st_names = list(design.share_confirmation_settings(0.25, "streets"))
    sh_names = list(design.share_confirmation_settings(0.25, "shapes"))
    streets = _confirmation(0.25, st_names, design.SHARE_STREETS_SEEDS,
                            [_diff(em, base, 0.3, -0.4, 1.0, 0.5), _diff(em, grid, 0.9, 0.3, 1.5, 0.03)], False)
    shapes = _confirmation(0.25, sh_names, design.SHARE_SHAPES_SEEDS, [_diff(em, base, 2.0, 1.0, 3.0, 0.002)], True)
    for d in streets["differences"] + shapes["differences"]:  # as ``paired`` and ``holm`` set them
        d["p"] = d["p_holm"]
        d["verdict"] = "not distinguishable on this benchmark" if d["low"] <= 0 <= d["high"] else "better"
    partial = dict(streets, table={n: dict(r, seeds=r["seeds"][:3]) for n, r in streets["table"].items()},
                   finished_runs=15)
    text = report.share_report(selection, partial, None)
    assert "share 0.25" in text and "`streets` 15 of 40, `shapes` 0 of 16" in text and "no verdict yet" in text
    assert "Answers" not in text and "Which to use" not in text and "(in progress)" in text
    # interim intervals are shown, verdicts are not
    assert "+0.30 (-0.40, +1.00) | pending |" in text and "not distinguishable" not in text and "better" not in text
    earlier = {"streets": {"differences": [_diff("unimatch+entropymix", base, -0.4, -1.2, 0.4, 0.6)]},
               "shapes": {"differences": [_diff("unimatch+entropymix", base, 4.8, 3.1, 6.6, 0.001)]}}
    text = report.share_report(selection, streets, shapes, earlier)
    assert "(in progress)" not in text and "**Default.**" not in text
    assert ("Does entropy placement beat random placement at equal share on `streets`? **yes**: +0.90 mIoU "
            "(95% CI +0.30 to +1.50") in text
    assert "Does EntropyMix at that share beat CutMix on `streets`? not distinguishable on this benchmark" in text
    assert "Does EntropyMix at that share beat CutMix on `shapes`? **yes**" in text
    assert ("On object-centric data like `shapes`: EntropyMix, which beats CutMix both with `share=0.25` "
            "(+2.00 (+1.00, +3.00), 8 seeds: better) and, in the first study on other seeds, with its own per-cell "
            "selection (`share=None`, the default; +4.80 (+3.10, +6.60)") in text and "does not rank them" in text
    alone = dict(earlier, shapes={"differences": [_diff("unimatch+entropymix", base, 0.4, -1.0, 1.8, 0.5)]})
    assert ("On object-centric data like `shapes`: EntropyMix with `share=0.25` (+2.00 (+1.00, +3.00)"
            in report.share_report(selection, streets, shapes, alone))
    assert "On driving scenes like `streets`: CutMix, which EntropyMix does not beat" in text
    ranked = dict(selection, table={f"unimatch+entropymix-share{s:g}": {"seeds": [200], "score": [m], "mean": m}
                                    for s, m in zip(design.SHARES, (65.8, 65.9, 65.4))})
    assert ("the rule chose share 0.25 (EntropyMix's mean scores: share 0.1 65.80, share 0.25 65.90, share 0.5 65.40; "
            "the best, share 0.25)") in report.share_report(ranked)  # it says why it chose
    assert "share 0.1 is within 0.25 mIoU of the best, share 0.25, and smaller" in \
        report.share_report(dict(ranked, chosen_share=0.1))
    text = report.share_report(selection, dict(streets, entropymix_beats_cutmix=True), shapes, earlier)
    assert "**Default.** EntropyMix at share 0.25 beats CutMix on both datasets" in text
    assert "Which to use" not in text


def test_a_calibration_on_other_code_stands_only_when_both_codes_give_the_recorded_outputs(monkeypatch):
    from study import report
    monkeypatch.setattr(report, "pinned_codes", lambda: {"aaa": "recorded", "bbb": "verified"})
    cal = lambda code: {"provenance": {"code": code}}
    study = lambda code: {"provenance": {"code": code}}
    assert report._calibration_code_note(cal("aaa"), study("aaa")) == ""
    assert report._calibration_code_note(cal("aaa"), None) == ""  # no study yet: nothing to stand for
    assert "stands for the study" in report._calibration_code_note(cal("aaa"), study("bbb"))
    assert "may not suit" in report._calibration_code_note(cal("aaa"), study("ccc"))
    assert "may not suit" in report._calibration_code_note(cal("ccc"), study("bbb"))


def test_traffic_counts_ops_and_bytes_against_the_floor(capsys):
    """The byte/op benchmark's smoke run, with generous bounds on what it measures (device-independent,
    so a bound holds on any machine): the default EntropyMix call stays within 4x the floor in bytes
    and 100 ATen ops, and BCP's cube with its replays moves no more than BCP's own blends."""
    import traffic
    cases = traffic.main(["--quick"])["cases"]
    assert "| call | ATen ops | MB moved | floor MB | x floor |" in capsys.readouterr().out
    for dims in ("2-D", "3-D"):
        default = cases[f"{dims}: EntropyMix() on probabilities (checks on: the default)"]
        assert default["x_floor"] < 4 and default["ops"] <= 100, (dims, default["x_floor"], default["ops"])
        assert cases[f"{dims}: EntropyMix().within_batch on probabilities"]["x_floor"] < 4
    assert cases["BCP step: CutMix.bcp() and plan replays"]["x_bcp"] <= 1.1


def test_share_confirmation_runs_at_the_selected_share_on_held_out_seeds(tmp_path, capsys):
    """The confirmation refuses to start before the selection chose a share, then trains its settings
    at that share (streets: five; shapes: CutMix against EntropyMix), paired by seed, with the
    entropy-vs-random comparison, and says whether EntropyMix at the share beats CutMix."""
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"chosen_share": None}))
    common = ["--confirm-share", "--share-selection", str(selection), "--quick", "--seeds", "0", "1",
              "--out-root", str(tmp_path / "runs"), "--jobs", "2", "--score-epochs", "1"]
    with pytest.raises(SystemExit, match="chosen no share"):
        ablation.main(common + ["--dataset", "streets", "--results", str(tmp_path / "streets.json")])
    selection.write_text(json.dumps({"chosen_share": 0.25}))
    out = ablation.main(common + ["--dataset", "streets", "--results", str(tmp_path / "streets.json")])
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 10 and sum("--share 0.25" in line for line in trained) == 6
    assert set(out["table"]) == {"unimatch+cutmix", "unimatch+entropymix-share0.25", "unimatch+grid-random-share0.25",
                                 "unimatch+entropymix-share0.25+speed", "unimatch+cutmix+speed"}
    pairs = {(d["setting"], d["reference"]) for d in out["differences"]}
    assert ("unimatch+entropymix-share0.25", "unimatch+grid-random-share0.25") in pairs
    assert out["entropymix_beats_cutmix"] in (True, False) and json.loads((tmp_path / "streets.json").read_text())["share"] == 0.25
    shapes = ablation.main(common + ["--dataset", "shapes", "--results", str(tmp_path / "shapes.json")])
    assert set(shapes["table"]) == {"unimatch+cutmix", "unimatch+entropymix-share0.25"}
    assert not set(design.SHARE_STREETS_SEEDS) & (set(design.STREETS_STUDY_SEEDS) | set(design.STREETS_CALIBRATION_SEEDS))
    assert not set(design.SHARE_SHAPES_SEEDS) & (set(design.STUDY_SEEDS) | set(design.CALIBRATION_SEEDS))


def test_share_selection_trains_its_grid_and_chooses_by_its_rule(tmp_path, capsys):
    """`--select-share`: CutMix and EntropyMix and random grid at each share, seed-major, nothing with
    SPEEDLoss; the share is chosen by the declared rule once every setting has every seed."""
    results = tmp_path / "share.json"
    out = ablation.main(["--select-share", "--quick", "--seeds", "0", "--out-root", str(tmp_path / "runs"),
                         "--results", str(results), "--jobs", "2", "--score-epochs", "1"])
    trained = [line for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    assert len(trained) == 7 and not any("--speed " in line for line in trained)
    assert all("--dataset streets" in line for line in trained)
    assert set(out["table"]) == set(design.SHARE_SETTINGS) and out["finished_runs"] == 7
    means = {s: out["table"][f"unimatch+entropymix-share{s:g}"]["mean"] for s in design.SHARES}
    best = max(means.values())
    assert out["chosen_share"] == min(s for s, m in means.items() if m >= best - design.SHARE_TIE)
    assert json.loads(results.read_text())["rule"] == design.SHARE_RULE
    assert set(design.SHARE_SELECTION_SEEDS) == set(design.STREETS_CALIBRATION_SEEDS)  # calibration seeds only


def test_share_report_cli_prints_the_readme_section(capsys):
    """`--share-report` prints the share study's README section, trains nothing."""
    from study.report import share_report_from
    assert ablation.main(["--share-report"]) == {}
    assert capsys.readouterr().out.strip() == share_report_from(BENCH / "results", ablation.provenance()["code"]).strip()
