"""examples/bcp.patch, exercised: it is applied to ``tests/upstream/LA_BCP_train.py`` (upstream's
lines that the patch touches or uses as context, byte for byte), which then trains two steps of a
small 3-D V-Net-like stand-in with an EMA teacher, copy-pasting labeled into unlabeled volumes and
back by EntropyMix (and by CutMix in BCP's form), with SPEEDLoss on the decoder features."""

import logging
import os
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patching import apply, check_files, have_tools, single_process_gpu_free, tools_accept

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "examples" / "BCP.md").read_text()
PATCH = (ROOT / "examples" / "bcp.patch").read_text()
STANDIN = (ROOT / "tests" / "upstream" / "LA_BCP_train.py").read_text()
UPSTREAM = "DeepMed-Lab-ECNU/BCP at commit 7879f988872f561231f73eecd5b4e232e54fa2bd"


class TinyVNet(nn.Module):
    """V-Net's interface: ``model(x) -> (logits, x8_up)``, the decoder features at full resolution
    (16 channels in BCP's V-Net), batch norm, dropout before the output convolution."""

    def __init__(self, n_classes=2, n_filters=16):
        super().__init__()
        f = n_filters
        self.enc1 = nn.Sequential(nn.Conv3d(1, f, 3, padding=1), nn.BatchNorm3d(f), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv3d(f, 2 * f, 2, stride=2), nn.BatchNorm3d(2 * f), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose3d(2 * f, f, 2, stride=2), nn.BatchNorm3d(f), nn.ReLU())
        self.block_nine = nn.Sequential(nn.Conv3d(f, f, 3, padding=1), nn.BatchNorm3d(f), nn.ReLU())
        self.dropout = nn.Dropout3d(0.5)
        self.out_conv = nn.Conv3d(f, n_classes, 1)

    def forward(self, x):
        x1 = self.enc1(x)
        x8_up = self.up(self.enc2(x1)) + x1
        return self.out_conv(self.dropout(self.block_nine(x8_up))), x8_up


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


def namespace(steps, B=8, size=(16, 16, 12)):
    g = torch.Generator().manual_seed(0)

    def batch():
        image = torch.rand(B, 1, *size, generator=g)
        return {"image": image, "label": (image[:, 0] > 0.5).long()}

    def setup(args):
        torch.manual_seed(0)
        model, ema_model = TinyVNet(), TinyVNet()
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


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # upstream logs the loss with %f
@pytest.mark.parametrize("mixer", ["entropymix", "bcp-cutmix"])
def test_two_bcp_steps_copy_paste_both_ways_by_the_plans(mixer, monkeypatch):
    single_process_gpu_free(monkeypatch)
    source = apply(STANDIN, PATCH)
    if mixer == "bcp-cutmix":  # BCP's own cube, as examples/BCP.md says
        source = source.replace('EntropyMix(grid=(4, 4, 4), select="max")', "CutMix(p=1.0, share=args.mask_ratio, shared=True)")
    steps = []
    env = namespace(steps)
    exec(compile(source, "LA_BCP_train.py", "exec"), env)
    args = Namespace(model="VNet", labeled_bs=4, u_weight=0.5, mask_ratio=2 / 3)
    env["self_train"](args, "pre", "self")
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"]) and step["loss_speed"] > 0
        plan_l, plan_u = step["plan_l"], step["plan_u"]
        assert plan_l.index.shape == ((2, 4, 4, 4) if mixer == "entropymix" else (2, 16, 16, 12))
        # the plans are the copy-paste: images, labels and BCP's loss masks
        assert torch.equal(step["mixl_img"], plan_l.apply([step["img_a"], step["unimg_a"]]))
        assert torch.equal(step["mixu_img"], plan_u.apply([step["unimg_b"], step["img_b"]]))
        assert torch.equal(step["mixl_lab"], torch.where(plan_l.source_map() == 0, step["lab_a"], step["plab_a"]))
        assert torch.equal(step["loss_mask_l"], (plan_l.source_map() == 0).long())
        assert 0 < float(step["loss_mask_l"].float().mean()) < 1 or mixer == "entropymix"
        assert step["feats_l"].shape == (2, 16, 16, 16, 12) and step["feats_l"].requires_grad
        assert not step["feat_a"].requires_grad and not step["unfeat_a"].requires_grad
    if mixer == "bcp-cutmix":  # one cube shared by the batch, 2/3 of every axis
        box = steps[0]["plan_l"].index.bool()
        assert torch.equal(box[0], box[1]) and int(box[0].sum()) == 10 * 10 * 8
    model, ema = steps[-1]["model"], steps[-1]["ema_model"]
    assert not torch.equal(model.out_conv.weight, ema.out_conv.weight)  # the EMA update runs, on its own copy
