"""Smoke tests of the volumetric example (``examples/train_volumes.py``): both mixers, SPEEDLoss,
resume, DDP, the embedded volumes, and a --help that imports no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import train_volumes  # noqa: E402
import volume_loop  # noqa: E402

TINY = ["--size", "12", "12", "8", "--grid", "2", "2", "2", "--num-labeled", "4", "--num-unlabeled", "8",
        "--num-val", "4", "--batch-size", "4", "--width", "4", "--pretrain-epochs", "1", "--epochs", "1",
        "--iters-per-epoch", "2", "--no-progress"]


@pytest.mark.parametrize("mix,speed", [("entropymix", True), ("cutmix", False)])
def test_both_mixers_train_and_write_results_and_figures(tmp_path, mix, speed):
    out = tmp_path / "run"
    res = volume_loop.main(train_volumes.parse_args(TINY + ["--mix", mix, "--speed" if speed else "--no-speed",
                                                            "--out-dir", str(out)]))
    pre, bcp = res["history"]
    assert pre["stage"] == "pretrain" and bcp["stage"] == "bcp"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res["history"]) and 0 <= bcp["dice"] <= 100
    assert (bcp["loss_speed"] > 0) == speed and set(bcp["dice_per_class"]) == set(volume_loop.CLASSES)
    assert 0 < bcp["pasted_share"]["labeled_into"] < 1
    for name in ("results.json", "latest.pth", "dice.png", "volumes.png", "mixing.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["final_dice"] == bcp["dice"]


def test_resume_continues_exactly_where_it_stopped(tmp_path, capsys):
    straight = volume_loop.main(train_volumes.parse_args(TINY + ["--out-dir", str(tmp_path / "a")]))
    volume_loop.main(train_volumes.parse_args(TINY + ["--stop-after", "1", "--out-dir", str(tmp_path / "b")]))
    resumed = volume_loop.main(train_volumes.parse_args(TINY + ["--resume", "--out-dir", str(tmp_path / "b")]))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(straight["history"], resumed["history"]):  # same seed: the same run, bit for bit
        assert a["loss"] == b["loss"] and a["dice"] == b["dice"]
    with pytest.raises(SystemExit):  # never replaces an earlier run without --resume or --overwrite
        train_volumes.parse_args(TINY + ["--out-dir", str(tmp_path / "b")])
    assert "already holds a run" in capsys.readouterr().err


def test_two_process_ddp_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLES / "train_volumes.py"), *TINY, "--out-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res["world_size"] == 2 and [h["epoch"] for h in res["history"]] == [1, 2]


def test_organs_are_deterministic_and_the_class_is_the_shape_not_the_intensity():
    x, y = volume_loop.make_organs(64, (24, 24, 16), seed=5)
    x2, y2 = volume_loop.make_organs(64, (24, 24, 16), seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (64, 1, 24, 24, 16) and y.shape == (64, 24, 24, 16)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    present = [int((y == c).sum()) for c in range(len(volume_loop.CLASSES))]
    assert all(n > 0 for n in present)
    means = [float(x[:, 0][y == c].mean()) for c in range(1, len(volume_loop.CLASSES))]
    assert max(means) - min(means) < 0.1  # no class is told apart by its brightness


def test_help_imports_no_torch_and_shows_defaults():
    code = ("import sys; sys.path.insert(0, %r); import train_volumes; "
            "train_volumes.parse_args(['--out-dir', '/nonexistent/run']); print('torch' in sys.modules)") % str(EXAMPLES)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    out = subprocess.run([sys.executable, str(EXAMPLES / "train_volumes.py"), "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "(default: entropymix)" in text and "organs" in text


def run_summary(result: dict) -> str:
    """The README's sentence on the default run, from its saved results (``volumes-default.json``)."""
    best = max(h["dice"] for h in result["history"])
    minutes, seconds = divmod(round(result["wall_seconds"]), 60)
    return (f"Measured on the 2-core CI machine (load average {result['load_average'][0]:.2f} at the start, "
            f"{result['load_average'][1]:.2f} at the end; the run uses both cores): {result['wall_seconds']:.0f} s wall, "
            f"{minutes} min {seconds} s, for {len(result['history'])} epochs; final mean foreground Dice "
            f"{result['final_dice']:.2f} on the {result['args']['num_val']} validation volumes (best {best:.2f}, EMA "
            f"teacher {result['teacher_dice']:.2f}); `benchmarks/results/volumes-default.json` holds the run's "
            "per-epoch record.")


def test_readme_states_the_default_run_as_saved():
    result = json.loads((EXAMPLES.parent / "benchmarks" / "results" / "volumes-default.json").read_text())
    defaults, saved = vars(train_volumes.parse_args(["--overwrite"])), dict(result["args"])
    for key in ("overwrite", "resume", "no_progress"):  # switches that change nothing computed
        defaults.pop(key), saved.pop(key)
    assert saved == defaults  # the run the README reads is the default one
    assert run_summary(result) in (EXAMPLES.parent / "README.md").read_text()
