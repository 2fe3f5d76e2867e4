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
import unimatch_loop as train  # noqa: E402  (the loop behind examples/train.py)

TINY = ["--num-labeled", "4", "--num-unlabeled", "16", "--num-val", "10", "--crop-size", "32", "--batch-size", "4",
        "--width", "8", "--iters-per-epoch", "2", "--no-progress"]


@pytest.mark.parametrize("method,mix,speed,extra", [
    ("supervised", "cutmix", False, []),
    ("fixmatch", "entropymix", True, []),
    ("unimatch", "cutmix", False, []),
    ("unimatch", "classmix", True, []),
    ("unimatch", "entropymix", True, ["--views", "3", "--first-select", "random"]),
    ("unimatch", "entropymix", True, ["--amp"]),
    ("unimatch", "entropymix", True, ["--entropy-scale", "0.5"]),
])
def test_every_method_and_mixer_runs(tmp_path, method, mix, speed, extra):
    out = tmp_path / "run"
    res = train.main(TINY + ["--method", method, "--mix", mix, "--speed" if speed else "--no-speed",
                             "--epochs", "1", "--out-dir", str(out), *extra])
    (record,) = res["history"]
    assert np.isfinite(record["loss"]) and 0 <= record["miou"] <= 100
    assert len(record["iou"]) == len(data.SHAPE_CLASSES)
    if method == "unimatch":
        assert record["loss_fp"] >= 0 and record["loss_s"] >= 0
    assert (record["loss_speed"] > 0) == (speed and method != "supervised")
    for name in ("results.json", "latest.pth", "miou.png", "predictions.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["final_miou"] == record["miou"]
    if method != "supervised":  # what each stream's mixer did, per epoch, and a figure of it
        views = 3 if "--views" in extra else 2
        assert len(record["mixing"]) == (2 if method == "unimatch" else 1) and (out / "mixing.png").is_file()
        for stream in record["mixing"]:
            assert len(stream["view_share"]) == views and abs(sum(stream["view_share"]) - 1) < 1e-5
            assert 0 <= stream["whole_sample_share"] <= 1


def test_share_mixes_that_fraction_of_every_image_in_the_example(tmp_path, capsys):
    """``--share 0.25`` (4 of a 4 x 4 grid's cells) is what both streams' mixers take from the other
    view, per the example's own record; it belongs to EntropyMix only."""
    res = train.main(TINY + ["--mix", "entropymix", "--no-speed", "--share", "0.25", "--epochs", "1",
                             "--out-dir", str(tmp_path / "run")])
    for stream in res["history"][0]["mixing"]:
        assert stream["view_share"] == pytest.approx([0.75, 0.25], abs=1e-6)
    with pytest.raises(SystemExit):
        train.parse_args(TINY + ["--mix", "cutmix", "--share", "0.25", "--out-dir", str(tmp_path / "x")])
    assert "--share 0.25: a fraction in [0, 1], with --mix entropymix" in capsys.readouterr().err


def test_resume_continues_exactly_where_it_stopped(tmp_path, capsys):
    args = TINY + ["--seed", "3"]
    straight = train.main(args + ["--epochs", "2", "--out-dir", str(tmp_path / "a")])
    train.main(args + ["--epochs", "2", "--stop-after", "1", "--out-dir", str(tmp_path / "b")])
    resumed = train.main(args + ["--epochs", "2", "--resume", "--out-dir", str(tmp_path / "b")])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    with pytest.raises(SystemExit):  # a re-run without --resume never replaces the earlier run's checkpoint
        train.parse_args(args + ["--epochs", "2", "--out-dir", str(tmp_path / "b")])
    assert "already holds a run" in capsys.readouterr().err
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
    img, mask = data._ImageLoader(str(root), "pascal", 21)(*pairs[0])
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


def test_amp_training_step_is_finite_and_decreasing():
    """The UniMatch step under bfloat16 autocast (the example's --amp on CPU), on one fixed batch."""
    args = train.parse_args(TINY + ["--out-dir", "unused", "--overwrite"])
    torch.manual_seed(0)
    model = train.DeepLabV3Plus(6, width=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x, y = data.make_shapes(8, 32, seed=0)
    batch = (x[:4], y[:4], x[4:], torch.zeros(4, 32, 32, dtype=torch.long), [(x[:4].flip(-1), y[:4] * 0)])
    losses = []
    for _ in range(6):
        torch.manual_seed(1)  # the same strong views every step: only the weights change
        with train.amp(torch.device("cpu"), torch.bfloat16, True):
            loss, _, _ = train.training_loss(model, batch, args, train.build_mixers(args), train.SPEEDLoss(),
                                          train.strong_augmentation(32), g)
        opt.zero_grad()
        loss.backward()
        # every parameter learns: no weight lost its gradient to a cast cached under no_grad
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_ctrl_c_names_the_resume_command(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as exit_:
        train.main(TINY + ["--epochs", "1", "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and "interrupted in epoch 1" in err and err.strip().endswith("--resume")


def _splits(tmp_path, ids, lab_line=lambda i: f"JPEGImages/{i}.jpg SegmentationClass/{i}.png"):
    files = {}
    for name, sel in (("labeled", ids[:2]), ("unlabeled", ids[2:4]), ("val", ids[4:])):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("".join(lab_line(i) + "\n" for i in sel))
    return ["--labeled-ids", str(files["labeled"]), "--unlabeled-ids", str(files["unlabeled"]),
            "--val-ids", str(files["val"])]


def test_missing_files_and_a_wrong_root_fail_before_training(tmp_path):
    root = tmp_path / "VOC2012"
    ids = _fake_voc(root)
    (root / "SegmentationClass" / f"{ids[0]}.png").unlink()       # a labeled mask
    (root / "SegmentationClass" / f"{ids[2]}.png").unlink()       # an unlabeled mask: not needed
    split = _splits(tmp_path, ids)
    with pytest.raises(data.DataError, match=rf"(?s)1 file\(s\) .*missing.*SegmentationClass/{ids[0]}.png \(--labeled-ids\)"):
        data.real_splits("pascal", str(root), *split[1::2])
    with pytest.raises(data.DataError, match=r"--data-root .*nowhere is not a directory"):
        data.real_splits("pascal", str(tmp_path / "nowhere"), *split[1::2])
    with pytest.raises(data.DataError, match=r"--val-ids .*none.txt does not exist"):
        data.real_splits("pascal", str(root), split[1], split[3], str(tmp_path / "none.txt"))
    # the command line: one line on stderr, nothing trained, no traceback
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train.py"), "--dataset", "pascal", "--data-root",
                           str(root), *split, "--out-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_mask_values_outside_the_classes_name_the_file(tmp_path):
    from PIL import Image
    root = tmp_path / "cs"
    ids = _fake_voc(root)
    Image.fromarray(np.full((40, 48), 33, np.uint8)).save(root / "SegmentationClass" / f"{ids[0]}.png")  # a labelIds value
    loader = data.real_splits("cityscapes", str(root), *_splits(tmp_path, ids)[1::2])[3]
    with pytest.raises(data.DataError, match=rf"{ids[0]}.png: label values \[33\] outside 0..18 and 255 .*labelTrainIds"):
        loader(f"JPEGImages/{ids[0]}.jpg", f"SegmentationClass/{ids[0]}.png")
    image, mask = loader(f"JPEGImages/{ids[2]}.jpg", None)  # unlabeled: no mask read
    assert mask.shape == image.shape[1:] and not mask.any()


def test_help_is_fast_and_shows_defaults_and_layouts():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(EXAMPLES / "train.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "(default: 20)" in proc.stdout and "labelTrainIds" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "argparse" in imported and "torch" not in imported  # torch is imported after parsing


def test_streets_are_deterministic_long_tailed_and_in_context():
    """The second embedded dataset: the same scenes from the same seed; stuff classes large,
    things (poles, signs, cars, people) a few percent; sky above, road below; no colour gives a
    class away (per-image illumination, overlapping palettes)."""
    x, y = data.make_streets(200, 96, seed=7)
    x2, y2 = data.make_streets(200, 96, seed=7)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (200, 3, 96, 96) and y.shape == (200, 96, 96)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and int(y.min()) >= 0 and int(y.max()) < len(data.STREET_CLASSES)
    share = torch.bincount(y.flatten(), minlength=len(data.STREET_CLASSES)).double() / y.numel()
    things = [data.STREET_CLASSES.index(t) for t in data.THINGS]
    stuff = [c for c in range(len(data.STREET_CLASSES)) if c not in things]
    assert all(0.0005 < share[c] < 0.05 for c in things) and 0.005 < share[things].sum() < 0.12
    assert all(share[c] > 0.05 for c in stuff)
    sky, road = data.STREET_CLASSES.index("sky"), data.STREET_CLASSES.index("road")
    rows = torch.arange(96).view(1, 96, 1).expand_as(y).float()
    assert rows[y == sky].mean() < 30 < 60 < rows[y == road].mean()
    brightness = x.mean((1, 2, 3))
    assert float(brightness.std()) > 0.05  # each image its own illumination
    # nearest class-mean colour, the best a colour-only rule does per pixel, is far from enough
    pixels, labels = x.permute(0, 2, 3, 1).reshape(-1, 3), y.flatten()
    means = torch.stack([pixels[labels == c].mean(0) for c in range(len(data.STREET_CLASSES))])
    guess = torch.cdist(pixels, means).argmin(1)
    assert float((guess == labels).float().mean()) < 0.6


def test_streets_dataset_trains_in_the_example(tmp_path):
    out = tmp_path / "streets"
    res = train.main(TINY + ["--crop-size", "48", "--dataset", "streets", "--epochs", "1", "--out-dir", str(out)])
    (record,) = res["history"]
    assert res["classes"] == list(data.STREET_CLASSES) and len(record["iou"]) == len(data.STREET_CLASSES)
    assert np.isfinite(record["loss"]) and (out / "predictions.png").is_file()
