"""Smoke tests of the volumetric example (``examples/train_volumes.py``): both mixers, SPEEDLoss,
resume, DDP, the embedded volumes, and a --help that imports no torch."""

import copy
import json
import math
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
from entropymix import EntropyMix  # noqa: E402

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
    # switches added after the run, whose defaults compute what the run computed (share=None: the
    # per-cell selection, unchanged bit for bit)
    for key, then in {"share": None}.items():
        if key not in saved:
            assert defaults.pop(key) == then, key
    assert saved == defaults  # the run the README reads is the default one
    assert run_summary(result) in (EXAMPLES.parent / "README.md").read_text()


# --- the loop's pieces, each against its definition -------------------------------------------------

def test_flip_keeps_volume_and_label_aligned_and_flips_each_spatial_axis_by_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 5, 4, 3, generator=g)
    y = (x[:, 0] * 7).long()  # the label is a function of the voxel: aligned iff it still is after the flip
    xf, yf = volume_loop.flip(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(yf, (xf[:, 0] * 7).long())
    subsets = [[a for a in range(3) if m >> a & 1] for m in range(8)]
    flipped = torch.zeros(3)
    for b in range(len(x)):  # each sample is its own volume flipped along a set of spatial axes
        found = [s for s in subsets if torch.equal(xf[b], x[b].flip([1 + a for a in s]) if s else x[b])]
        assert len(found) == 1
        flipped[found[0]] += 1
    assert ((flipped > 0.3 * len(x)) & (flipped < 0.7 * len(x))).all(), flipped  # each axis with probability 1/2
    alone, none = volume_loop.flip(x, None, torch.Generator().manual_seed(1))
    assert none is None and torch.equal(alone, xf)  # the same draws without labels


def test_region_loss_is_cross_entropy_plus_foreground_dice_on_known_volumes():
    target = torch.tensor([0, 1, 2, 2]).view(1, 2, 2, 1)
    sure = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 60 - 30
    everywhere = torch.ones_like(target)
    assert float(volume_loop.region_loss(sure, target, everywhere)) < 1e-6   # right and sure: no loss
    uniform = torch.zeros(1, 3, 2, 2, 1)
    # p = 1/3 everywhere: CE log 3; Dice of class 1: 2 (1/3) / (4/3 + 1), of class 2: 2 (2/3) / (4/3 + 2);
    # the background is not a class Dice averages over
    dice = ((2 / 3) / (7 / 3) + (4 / 3) / (10 / 3)) / 2
    expected = (math.log(3) + 1 - dice) / 2
    assert abs(float(volume_loop.region_loss(uniform, target, everywhere)) - expected) < 1e-5
    # only the voxels of the region count: without the last voxel, each class's Dice is (2/3) / 2
    region = torch.tensor([1, 1, 1, 0]).view(1, 2, 2, 1)
    expected = (math.log(3) + 1 - 1 / 3) / 2
    assert abs(float(volume_loop.region_loss(uniform, target, region)) - expected) < 1e-5


def test_ema_update_is_its_definition():
    torch.manual_seed(0)
    teacher, student = volume_loop.UNet3D(4, width=2), volume_loop.UNet3D(4, width=2)
    student(torch.rand(2, 1, 4, 4, 4))  # batch-norm statistics move in the student
    before = copy.deepcopy(teacher)
    volume_loop.ema_update(teacher, student, 0.9)
    for (name, t), s, b in zip(teacher.named_parameters(), student.parameters(), before.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-7), name
    for (name, t), s, b in zip(teacher.named_buffers(), student.buffers(), before.buffers()):
        expected = 0.9 * b + 0.1 * s if t.is_floating_point() else s  # running stats averaged, the counter copied
        assert torch.allclose(t.float(), expected.float(), atol=1e-7), name


def test_cutmix_is_bcps_shared_cube_and_entropymix_its_grid():
    args = train_volumes.parse_args(TINY + ["--mix", "cutmix", "--out-dir", "unused"])
    ones = torch.ones(4, 1, 12, 12, 9)
    for seed in range(20):
        plan = volume_loop.make_mixer(args)([torch.zeros_like(ones), ones], generator=torch.Generator().manual_seed(seed))[1]
        cube = plan.index.bool()
        assert all(torch.equal(cube[0], c) for c in cube) and int(cube[0].sum()) == 8 * 8 * 6  # one cube, 2/3 of each axis
        where = cube[0].nonzero()
        assert all(int(where[:, d].max()) < n - 1 for d, n in enumerate((12, 12, 9)))     # never at the far edge
    args = train_volumes.parse_args(TINY + ["--mix", "entropymix", "--out-dir", "unused"])
    mixer = volume_loop.make_mixer(args)
    assert isinstance(mixer, EntropyMix) and mixer.grid == (2, 2, 2) and mixer.share is None
    args = train_volumes.parse_args(TINY + ["--share", "0.25", "--out-dir", "unused"])
    plan = volume_loop.make_mixer(args)([torch.zeros_like(ones), ones], logits=[torch.zeros(4, 2, 12, 12, 9)] * 2,
                                        generator=torch.Generator().manual_seed(0))[1]
    assert ((plan.index != 0).flatten(1).sum(1) == 2).all()  # 2 of the 8 cells, in every volume


def reference_region_loss(logits, target, region):
    """CE over the region's voxels, plus 1 - mean foreground Dice of softmax over the region, halved."""
    region = region.double()
    logp = torch.log_softmax(logits.double(), 1)
    ce = -(logp.gather(1, target[:, None])[:, 0] * region).sum() / region.sum().clamp_min(1)
    dices = []
    for c in range(1, logits.shape[1]):
        p, t = logp[:, c].exp() * region, (target == c).double() * region
        dices.append((2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5))
    return (ce + 1 - torch.stack(dices).mean()) / 2


def test_cutmix_pastes_one_cube_both_ways_as_bcp_does():
    """BCP draws one ``context_mask`` per step and uses it in both directions (outside the cube from
    the first volume, inside from the second): with ``--mix cutmix`` both plans are that one cube."""
    torch.manual_seed(0)
    model, teacher = volume_loop.UNet3D(3, width=4).eval(), volume_loop.UNet3D(3, width=4).eval()
    g = torch.Generator().manual_seed(2)
    img_l, img_u = torch.rand(4, 1, 9, 8, 6, generator=g), torch.rand(4, 1, 9, 8, 6, generator=g)
    lab_l = torch.randint(0, 3, (4, 9, 8, 6), generator=g)
    args = train_volumes.parse_args(TINY + ["--mix", "cutmix", "--out-dir", "unused"])
    mixer = volume_loop.make_mixer(args)
    _, _, (plan_l, plan_u), _ = volume_loop.bcp_loss(model, teacher, (img_l, lab_l), img_u, mixer, None, args)
    assert plan_u is plan_l
    cube = plan_l.source_map() == 1
    assert cube.any() and not cube.all() and torch.equal(cube, cube[:1].expand_as(cube))  # one cube, the batch's


def test_bcp_loss_equals_the_bidirectional_copy_paste_computed_independently():
    """Every piece of a BCP step against a computation that shares none of its code: the teacher on
    each half alone, the plans from the right (view, logits) pairs, the regions each label came
    from weighed 1 (labeled) or u_weight (pseudo-labeled), and SPEEDLoss on the teacher's logits
    and features mixed by the regions."""
    torch.manual_seed(0)
    model, teacher = volume_loop.UNet3D(4, width=4).eval(), volume_loop.UNet3D(4, width=4).eval()
    with torch.no_grad():  # a teacher whose argmax varies from voxel to voxel (an untrained one picks one class)
        teacher.classifier.weight.mul_(40)
    g = torch.Generator().manual_seed(1)
    img_l, img_u = torch.rand(4, 1, 8, 8, 6, generator=g), torch.rand(4, 1, 8, 8, 6, generator=g)
    lab_l = torch.randint(0, 4, (4, 8, 8, 6), generator=g)
    args = train_volumes.parse_args(TINY + ["--u-weight", "0.3", "--speed-weight", "0.7", "--out-dir", "unused"])
    mixer, speed = EntropyMix((2, 2, 2)), volume_loop.SPEEDLoss()
    loss, (loss_l, loss_u, loss_speed), (plan_l, plan_u), _ = volume_loop.bcp_loss(
        model, teacher, (img_l, lab_l), img_u, mixer, speed, args)

    img_a, img_b, lab_a, lab_b, unimg_a, unimg_b = img_l[:2], img_l[2:], lab_l[:2], lab_l[2:], img_u[:2], img_u[2:]
    with torch.no_grad():
        (t_a, f_a), (t_b, f_b), (t_ua, f_ua), (t_ub, f_ub) = (teacher(v) for v in (img_a, img_b, unimg_a, unimg_b))
        from_u = mixer([img_a, unimg_a], logits=[t_a, t_ua])[1].source_map() == 1  # unlabeled regions in labeled volumes
        from_l = mixer([unimg_b, img_b], logits=[t_ub, t_b])[1].source_map() == 1  # labeled regions in unlabeled volumes
    assert torch.equal(plan_l.source_map() == 1, from_u) and torch.equal(plan_u.source_map() == 1, from_l)
    assert 0 < float(from_u.float().mean()) < 1 and 0 < float(from_l.float().mean()) < 1
    pick = lambda m, x, y: torch.where(m.view(m.shape[0], 1, *m.shape[1:]) if x.dim() == 5 else m, y, x)  # noqa: E731
    mixl, mixu = pick(from_u, img_a, unimg_a), pick(from_l, unimg_b, img_b)
    (out_l, fe_l), (out_u, fe_u) = model(mixl), model(mixu)
    plab_a, plab_b = t_ua.argmax(1), t_ub.argmax(1)
    assert not torch.equal(plab_a, plab_b) and len(plab_a.unique()) > 1  # pseudo-labels that tell the halves apart
    u = 0.3
    ref_l = reference_region_loss(out_l, lab_a, ~from_u) + u * reference_region_loss(out_l, plab_a, from_u)
    ref_u = u * reference_region_loss(out_u, plab_b, ~from_l) + reference_region_loss(out_u, lab_b, from_l)
    ref_speed = (speed(out_l, pick(from_u, t_a, t_ua), fe_l, pick(from_u, f_a, f_ua))
                 + speed(out_u, pick(from_l, t_ub, t_b), fe_u, pick(from_l, f_ub, f_b))) / 2
    for got, want in ((loss_l, ref_l), (loss_u, ref_u), (loss_speed, ref_speed), (loss, ref_l + ref_u + 0.7 * ref_speed)):
        assert torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-6), (float(got), float(want))
