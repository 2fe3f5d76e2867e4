"""Smoke runs of the benchmarks (they assert nothing about time: timing belongs to benchmarks/)."""

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402
import speed  # noqa: E402


def test_speed_quick_writes_tables_and_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = speed.main(["--quick", "--no-compile", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["quick"] and {r["method"] for r in saved["mix"]} >= {
        "UniMatch CutMix, boolean index (p=1.0)", "MixPlan.apply (4 tensors)", "EntropyMix full call, eager entropy"}
    assert all(r["ms"] > 0 for r in result["mix"]) and [r["method"] for r in saved["relation"]] == ["gram", "naive"]
    assert [r["variant"] for r in saved["step"]][-1] == "UniMatch + EntropyMix + SPEEDLoss"
    printed = capsys.readouterr().out
    assert "| method |" in printed and "Relation term" in printed and "UniMatch training step" in printed


def test_ablation_quick_is_resumable(tmp_path, capsys):
    args = ["--quick", "--seeds", "0", "1", "--settings", "supervised", "unimatch+classmix",
            "--out-root", str(tmp_path / "runs"), "--results", str(tmp_path / "ablation.json")]
    table = ablation.main(args)
    assert set(table) == {"supervised", "unimatch+classmix"}
    assert all(len(row["final_miou"]) == 2 for row in table.values())
    assert (tmp_path / "ablation.png").is_file()
    capsys.readouterr()
    again = ablation.main(args)  # every run is finished: nothing is trained again
    assert "train.py" not in capsys.readouterr().out and again == table
