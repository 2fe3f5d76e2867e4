"""examples/bcp.patch, exercised: it is applied to ``tests/upstream/LA_BCP_train.py`` (upstream's
lines that the patch touches or uses as context, byte for byte), which then trains two steps of a
small 3-D V-Net-like stand-in with an EMA teacher, copy-pasting labeled into unlabeled volumes and
back by EntropyMix (and by CutMix in BCP's form), with SPEEDLoss on the decoder features."""

import logging
import math
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from entropymix import CutMix, EntropyMix
from patching import apply, check_files, have_tools, single_process_gpu_free, tools_accept

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "examples" / "BCP.md").read_text()
PATCH = (ROOT / "examples" / "bcp.patch").read_text()
STANDIN = (ROOT / "tests" / "upstream" / "LA_BCP_train.py").read_text()
UPSTREAM = "DeepMed-Lab-ECNU/BCP at commit 7879f988872f561231f73eecd5b4e232e54fa2bd"


def vnet():
    """BCP's V-Net (``net_factory(net_type="VNet", mode="train")``), from the stand-in of its file."""
    sys.path.insert(0, str(ROOT / "tests" / "upstream"))
    try:
        from VNet import VNet
    finally:
        sys.path.pop(0)
    return VNet(n_channels=1, n_classes=2)


def get_cut_mask(out, thres=0.5, nms=0):
    """BCP's pseudo-labels (foreground where its probability reaches ``thres``), without the
    largest-connected-component step."""
    return (F.softmax(out, dim=1)[:, 1] >= thres).long()


def mix_loss(net3_output, img_l, patch_l, mask, l_weight=1.0, u_weight=0.5, unlab=False):
    """BCP's region-weighted loss (its cross-entropy half): ``mask`` 1 where the image part is."""
    image_weight, patch_weight = (u_weight, l_weight) if unlab else (l_weight, u_weight)
    ce_l = F.cross_entropy(net3_output, img_l.long(), reduction="none")
    ce_p = F.cross_entropy(net3_output, patch_l.long(), reduction="none")
    return (image_weight * (ce_l * mask).sum() / (mask.sum() + 1e-16)
            + patch_weight * (ce_p * (1 - mask)).sum() / ((1 - mask).sum() + 1e-16))


@torch.no_grad()
def update_ema_variables(model, ema_model, alpha):
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.data.mul_(alpha).add_(param.data, alpha=1 - alpha)


class Writer:
    def add_scalar(self, *args):
        pass


# The smallest patch BCP's V-Net takes: four halvings, then a 3 x 3 x 3 max-pool of the bottleneck.
SIZE = (48, 48, 48)


def namespace(steps, B=4, size=SIZE):
    g = torch.Generator().manual_seed(0)

    def batch():
        image = torch.rand(B, 1, *size, generator=g)
        return {"image": image, "label": (image[:, 0] > 0.5).long()}

    def setup(args):
        torch.manual_seed(0)
        model, ema_model = vnet(), vnet()
        for param in ema_model.parameters():
            param.detach_()
        return model, ema_model, [batch(), batch()], None, None, args.labeled_bs // 2, steps

    return {"torch": torch, "optim": torch.optim, "os": os, "logging": logging, "base_lr": 0.01, "setup": setup,
            "DataLoader": lambda db, **kwargs: db, "load_net": lambda net, path: None, "Writer": Writer,
            "get_cut_mask": get_cut_mask, "mix_loss": mix_loss, "update_ema_variables": update_ema_variables,
            "get_current_consistency_weight": lambda epoch: 0.1}


def test_patch_names_its_upstream_commit_and_the_markdown_shows_its_hunks():
    check_files(RECIPE, PATCH, UPSTREAM, 2)


def test_patch_applies_to_the_stand_in_and_leaves_no_hand_written_blend():
    patched = apply(STANDIN, PATCH)
    compile(patched, "LA_BCP_train.py", "exec")
    assert "context_mask(" not in patched and "* (1 - img_mask)" not in patched and "plan_l.apply" in patched


@pytest.mark.skipif(not have_tools(), reason="needs git and GNU patch")
def test_git_apply_and_gnu_patch_accept_the_patch_on_the_stand_in(tmp_path):
    (tmp_path / "code").mkdir()
    tools_accept(tmp_path, "code/LA_BCP_train.py", STANDIN, PATCH)


def bcp_form(source):
    """The two edits examples/BCP.md names for BCP's own copy-paste: its cuboid, one for both directions."""
    old = 'EntropyMix(grid=(4, 4, 4), select="max", share=args.mask_ratio ** 3)'
    assert source.count(old) == 1
    source = source.replace(old, "CutMix.bcp(args.mask_ratio)")
    old = "mixu_img, plan_u = mixer([unimg_b, img_b], logits=[unoutput_b, output_b])"
    assert source.count(old) == 1
    return source.replace(old, "mixu_img, plan_u = plan_l.apply([unimg_b, img_b]), plan_l")


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # upstream logs the loss with %f
@pytest.mark.parametrize("mixer", ["entropymix", "bcp"])
def test_two_bcp_steps_copy_paste_both_ways_and_distil_decoder_features(mixer, monkeypatch):
    """Two steps of the patched self_train() on BCP's V-Net: the plans do the copy-paste of images,
    labels and loss masks, and SPEEDLoss gets the decoder's last block, (B, 16, X, Y, Z), from the
    taps, not the pooled bottleneck that V-Net's forward returns beside the logits."""
    single_process_gpu_free(monkeypatch)
    source = apply(STANDIN, PATCH)
    if mixer == "bcp":
        source = bcp_form(source)
    steps = []
    env = namespace(steps)
    exec(compile(source, "LA_BCP_train.py", "exec"), env)
    args = Namespace(model="VNet", labeled_bs=2, u_weight=0.5, mask_ratio=2 / 3)
    env["self_train"](args, "pre", "self")
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"]) and step["loss_speed"] > 0
        plan_l, plan_u = step["plan_l"], step["plan_u"]
        assert plan_l.index.shape == ((1, 4, 4, 4) if mixer == "entropymix" else (1, *SIZE))
        # the plans are the copy-paste: images, labels and BCP's loss masks
        assert torch.equal(step["mixl_img"], plan_l.apply([step["img_a"], step["unimg_a"]]))
        assert torch.equal(step["mixu_img"], plan_u.apply([step["unimg_b"], step["img_b"]]))
        assert torch.equal(step["mixl_lab"], torch.where(plan_l.source_map() == 0, step["lab_a"], step["plab_a"]))
        assert torch.equal(step["mixu_lab"], torch.where(plan_u.source_map() == 0, step["plab_b"], step["lab_b"]))
        assert torch.equal(step["loss_mask_l"], (plan_l.source_map() == 0).long())
        if mixer == "entropymix":  # as much as BCP's cube in each direction, never a whole-volume swap
            assert all(int((p.index != 0).sum()) == 19 for p in (plan_l, plan_u))
        # decoder features at full resolution, the student's with their graph, the teacher's without
        for name in ("feats_l", "feats_u", "feat_a", "feat_b", "unfeat_a", "unfeat_b"):
            assert step[name].shape == (1, 16, *SIZE), (name, step[name].shape)
        assert step["feats_l"].requires_grad and not step["feat_a"].requires_grad and not step["unfeat_b"].requires_grad
        assert len(step["tap"]) == 0 and len(step["ema_tap"]) == 0  # every record popped in its step
    if mixer == "bcp":  # BCP's context_mask: one cube, 2/3 of every axis, for the batch and both directions
        for step in steps:
            assert step["plan_u"] is step["plan_l"]
            cube = step["plan_l"].index[0].bool()
            assert int(cube.sum()) == 32 ** 3
            starts = [int(cube.nonzero()[:, d].min()) for d in range(3)]
            assert all(0 <= s <= 48 - 32 - 1 for s in starts)  # never flush with the far edge
    model, ema = steps[-1]["model"], steps[-1]["ema_model"]
    assert not torch.equal(model.decoder.out_conv.weight, ema.decoder.out_conv.weight)  # the EMA runs on its own copy


def context_mask_draw(size, mask_ratio, rng):
    """BCP's ``context_mask`` (code/utils/BCP_utils.py) reduced to its draw: the cube's sides
    ``int(n * mask_ratio)`` and its start ``np.random.randint(0, n - side)`` per axis (upstream writes
    112, 112, 80 for ``n``: LA's patch, where the two agree)."""
    sides = [int(n * mask_ratio) for n in size]
    return [rng.randint(0, n - s) for n, s in zip(size, sides)], sides


def chi2_critical(df, z=3.09):
    """Upper 0.001 quantile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("size", [(112, 112, 80), (12, 10, 9), (7, 6, 5)])
def test_cutmix_bcp_draws_context_masks_cubes(size):
    """``CutMix.bcp()`` against a re-implementation of BCP's ``context_mask``: the same sides, the same
    set of start positions (never flush with the far edge), and start frequencies that a
    chi-square test of homogeneity does not tell apart."""
    np = pytest.importorskip("numpy")
    n_draws = 600 if size[0] > 50 else 3000
    g, rng = torch.Generator().manual_seed(0), np.random.RandomState(0)
    mixer = CutMix.bcp(2 / 3)
    ones = torch.ones(2, 1, *size)
    ours = []
    for _ in range(n_draws):
        cube = mixer([torch.zeros_like(ones), ones], generator=g)[1].index.bool()
        assert torch.equal(cube[0], cube[1])  # shared by the batch
        where = cube[0].nonzero()
        ours.append(([int(where[:, d].min()) for d in range(3)], [int(where[:, d].max() - where[:, d].min()) + 1 for d in range(3)]))
    theirs = [context_mask_draw(size, 2 / 3, rng) for _ in range(n_draws)]
    assert {tuple(s) for _, s in ours} == {tuple(s) for _, s in theirs} == {tuple(int(n * 2 / 3) for n in size)}
    for d, n in enumerate(size):
        positions = n - int(n * 2 / 3)
        a = np.bincount([c[d] for c, _ in ours], minlength=positions)
        b = np.bincount([c[d] for c, _ in theirs], minlength=positions)
        assert len(a) == len(b) == positions and a.all() and b.all()  # 0 .. n - side - 1, each reached
        if positions > 1:
            chi2 = float((((a - b) ** 2) / (a + b)).sum())
            assert chi2 < chi2_critical(positions - 1), (d, a, b)


def test_a_share_keeps_both_directions_a_copy_paste_with_a_near_uniform_teacher():
    """BCP's form of EntropyMix: with a teacher unsure everywhere (nearly uniform logits) the
    per-cell selection hands a whole volume to one view; a share pastes as much as BCP's cube."""
    g = torch.Generator().manual_seed(0)
    img, unimg = torch.rand(2, 1, 16, 16, 12, generator=g), torch.rand(2, 1, 16, 16, 12, generator=g)
    # the unlabeled view's teacher a hair less sure everywhere, as an untrained teacher may be
    sure, unsure = torch.randn(2, 2, 16, 16, 12, generator=g) * 1e-3, torch.zeros(2, 2, 16, 16, 12)
    _, swap = EntropyMix((4, 4, 4))([img, unimg], logits=[sure, unsure])
    assert bool((swap.index == 1).all())  # the whole volume from the other view: no copy-paste left
    _, plan = EntropyMix((4, 4, 4), share=(2 / 3) ** 3)([img, unimg], logits=[sure, unsure],
                                                       generator=torch.Generator().manual_seed(0))
    assert ((plan.index != 0).flatten(1).sum(1) == 19).all()  # 19 of 64 cells, 30%: BCP's 8/27
