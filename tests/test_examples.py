"""Smoke tests of the reference training example: every method and mixer, resume, DDP, real layouts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import data  # noqa: E402
import train  # noqa: E402

TINY = ["--num-labeled", "4", "--num-unlabeled", "16", "--num-val", "10", "--crop-size", "32", "--batch-size", "4",
        "--width", "8", "--iters-per-epoch", "2", "--no-progress"]


@pytest.mark.parametrize("method,mix,speed", [
    ("supervised", "cutmix", False),
    ("fixmatch", "cutmix", False), ("fixmatch", "entropymix", True),
    ("unimatch", "cutmix", False), ("unimatch", "cutmix", True),
    ("unimatch", "entropymix", False), ("unimatch", "entropymix", True),
])
def test_every_method_and_mixer_runs(tmp_path, method, mix, speed):
    out = tmp_path / "run"
    res = train.main(TINY + ["--method", method, "--mix", mix, "--speed" if speed else "--no-speed",
                             "--epochs", "1", "--out-dir", str(out)])
    (record,) = res["history"]
    assert np.isfinite(record["loss"]) and 0 <= record["miou"] <= 100
    assert len(record["iou"]) == len(data.SHAPE_CLASSES)
    if method == "unimatch":
        assert record["loss_fp"] >= 0 and record["loss_s"] >= 0
    assert (record["loss_speed"] > 0) == (speed and method != "supervised")
    for name in ("results.json", "latest.pth", "miou.png", "predictions.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["final_miou"] == record["miou"]


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    args = TINY + ["--seed", "3"]
    straight = train.main(args + ["--epochs", "2", "--out-dir", str(tmp_path / "a")])
    train.main(args + ["--epochs", "2", "--stop-after", "1", "--out-dir", str(tmp_path / "b")])
    resumed = train.main(args + ["--epochs", "2", "--resume", "--out-dir", str(tmp_path / "b")])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(straight["history"], resumed["history"]):  # same seed: the same run, bit for bit
        assert a["loss"] == b["loss"] and a["miou"] == b["miou"]


def test_two_process_ddp_run_and_resume(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLES / "train.py"), *TINY, "--epochs", "2", "--out-dir", str(out)]
    for extra in (["--stop-after", "1"], ["--resume"]):
        proc = subprocess.run(cmd + extra, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and [h["epoch"] for h in res["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in res["history"])


def _fake_voc(root: Path, n: int = 6):
    from PIL import Image
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    palette = (np.arange(256 * 3) % 256).astype(np.uint8).tolist()
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        h, w = 40 + 3 * i, 48 - 2 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = rng.integers(0, 21, (h, w), dtype=np.uint8)
        mask[:2] = 255  # object boundaries are 255 in VOC
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{name}.png")
    return ids


def test_pascal_layout_and_split_files(tmp_path):
    root = tmp_path / "VOC2012"
    ids = _fake_voc(root)
    lab, unl, val = tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", tmp_path / "val.txt"
    lab.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in ids[:2]))
    unl.write_text("".join(f"{i}\n" for i in ids[2:5]))  # bare ids are accepted too
    val.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in ids[4:]))
    pairs = data.read_split(str(lab))
    img, mask = data.image_loader(str(root), "pascal")(*pairs[0])
    assert img.shape == (3, 40, 48) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert mask.shape == (40, 48) and mask.dtype == torch.int64
    assert (mask[:2] == 255).all() and mask[2:].max() < 21
    res = train.main(["--dataset", "pascal", "--data-root", str(root), "--labeled-ids", str(lab),
                      "--unlabeled-ids", str(unl), "--val-ids", str(val), "--crop-size", "32", "--batch-size", "2",
                      "--width", "8", "--epochs", "1", "--no-progress", "--out-dir", str(tmp_path / "run")])
    assert len(res["history"][0]["iou"]) == 21 and np.isfinite(res["history"][0]["loss"])


def test_weak_augmentation_pads_with_ignore_and_keeps_pairs_aligned():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(20 * 30, dtype=torch.float32).reshape(1, 20, 30).expand(3, 20, 30) / 600
    mask = torch.arange(20 * 30).reshape(20, 30) % 7
    for _ in range(20):
        a, m = data.weak_augment(img, mask, 32, g)
        assert a.shape == (3, 32, 32) and m.shape == (32, 32)
        pad = m == data.IGNORE
        assert (a[:, pad] == 0).all()


def test_shapes_dataset_is_deterministic_and_class_is_the_shape():
    x1, y1 = data.make_shapes(12, 32, seed=5)
    x2, y2 = data.make_shapes(12, 32, seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (12, 3, 32, 32) and 0 <= x1.min() and x1.max() <= 1
    assert set(y1.unique().tolist()) <= set(range(len(data.SHAPE_CLASSES))) and len(y1.unique()) > 2
    # colour carries no class information: mean colours of different classes overlap
    means = {c: x1.permute(1, 0, 2, 3)[:, y1 == c].mean(1) for c in y1.unique().tolist() if c > 0}
    spread = torch.stack(list(means.values())).std(0)
    assert (spread < 0.2).all()
