"""examples/unimatch_v2.patch, exercised: it is applied to ``tests/upstream/unimatch_v2.py``
(upstream's lines that the patch touches or uses as context, byte for byte), which then trains two
steps of a DINOv2 + DPT-like stand-in with an EMA teacher made by ``deepcopy`` (the taps supply
SPEEDLoss's inputs); the Markdown shows the patch's hunks exactly."""

from copy import deepcopy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pytest
from patching import apply, check_files, have_tools, single_process_gpu_free, tools_accept

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "examples" / "UNIMATCH_V2.md").read_text()
PATCH = (ROOT / "examples" / "unimatch_v2.patch").read_text()
STANDIN = (ROOT / "tests" / "upstream" / "unimatch_v2.py").read_text()
UPSTREAM = "LiheYoung/UniMatch-V2 at commit f6afb4dfca2d9dcbcee2307e97717954ca75c0ba"


class Fusion(nn.Module):
    """A DPT fusion block: add the skip, refine, upsample by 2 (or to ``size``)."""

    def __init__(self, d):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.ReLU())

    def forward(self, x, skip=None, size=None):
        x = self.conv(x if skip is None else x + skip)
        return F.interpolate(x, size=size, scale_factor=None if size else 2, mode="bilinear", align_corners=True)


class TinyDPT(nn.Module):
    """DPT's structure (ViT tokens from 4 layers, projects, resize_layers, scratch.layerN_rn,
    scratch.refinenet1..4, scratch.output_conv, complementary dropout), logits only."""

    def __init__(self, nclass=4, dim=16, d=8, patch=14):
        super().__init__()
        self.patch = patch
        self.backbone = nn.Conv2d(3, dim, patch, patch)  # tokens of a patch grid
        self.head = nn.Module()
        self.head.projects = nn.ModuleList([nn.Conv2d(dim, d, 1) for _ in range(4)])
        self.head.resize_layers = nn.ModuleList([nn.ConvTranspose2d(d, d, 4, 4), nn.ConvTranspose2d(d, d, 2, 2),
                                                 nn.Identity(), nn.Conv2d(d, d, 3, 2, 1)])
        self.head.scratch = nn.Module()
        for k in range(1, 5):
            setattr(self.head.scratch, f"layer{k}_rn", nn.Conv2d(d, d, 3, padding=1, bias=False))
            setattr(self.head.scratch, f"refinenet{k}", Fusion(d))
        self.head.scratch.output_conv = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.ReLU(True), nn.Conv2d(d, nclass, 1))
        self.binomial = torch.distributions.binomial.Binomial(probs=0.5)

    def forward(self, x, comp_drop=False):
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.backbone(x)
        features = [tokens.flatten(2).transpose(1, 2) * (1 + 0.1 * k) for k in range(4)]  # 4 "layers"
        if comp_drop:  # complementary dropout over the two halves of the batch
            bs, dim = features[0].shape[0], features[0].shape[-1]
            mask1 = self.binomial.sample((bs // 2, dim)) * 2.0
            mask = torch.cat((mask1, 2.0 - mask1))
            features = [f * mask.unsqueeze(1) for f in features]
        s = self.head.scratch
        out = [rs(pj(f.transpose(1, 2).reshape(f.shape[0], -1, h, w)))
               for f, pj, rs in zip(features, self.head.projects, self.head.resize_layers)]
        l1, l2, l3, l4 = s.layer1_rn(out[0]), s.layer2_rn(out[1]), s.layer3_rn(out[2]), s.layer4_rn(out[3])
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        return F.interpolate(s.output_conv(p1), (h * self.patch, w * self.patch), mode="bilinear", align_corners=True)


def test_patch_names_its_upstream_commit_and_the_markdown_shows_its_hunks():
    check_files(RECIPE, PATCH, UPSTREAM, 3)


def test_patch_applies_to_the_stand_in_and_leaves_no_flip():
    patched = apply(STANDIN, PATCH)
    compile(patched, "unimatch_v2.py", "exec")
    assert "flip(0)" not in patched and "feat_t.recording()" in patched and "within_batch" in patched


@pytest.mark.skipif(not have_tools(), reason="needs git and GNU patch")
def test_git_apply_and_gnu_patch_accept_the_patch_on_the_stand_in(tmp_path):
    tools_accept(tmp_path, "unimatch_v2.py", STANDIN, PATCH)


@pytest.mark.parametrize("B", [2, 3, 4])
def test_two_unimatch_v2_steps_with_an_ema_teacher_and_a_dpt_like_head(B, monkeypatch):
    single_process_gpu_free(monkeypatch)
    env = {"torch": torch, "nn": nn, "deepcopy": deepcopy}
    exec(compile(apply(STANDIN, PATCH), "unimatch_v2.py", "exec"), env)
    torch.manual_seed(0)
    model = TinyDPT()
    g = torch.Generator().manual_seed(0)
    S = 56  # a 4 x 4 patch grid of 14-pixel patches, as DINOv2's

    def batch():
        r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
        box = (torch.rand(B, S, S, generator=g) < 0.3).long()
        ignore = torch.zeros(B, S, S, dtype=torch.long).index_fill_(2, torch.arange(48, 56), 255)
        return ((r(B, 3, S, S), torch.randint(0, 4, (B, S, S), generator=g)),
                (r(B, 3, S, S), r(B, 3, S, S), r(B, 3, S, S), ignore, box, box))
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone")]
    optimizer = torch.optim.AdamW([{"params": model.backbone.parameters()}, {"params": head}], lr=1e-3)
    cfg = {"conf_thresh": 0.3, "lr": 1e-3, "lr_multi": 10.0, "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}}
    steps = []
    env["main"](model, optimizer, [batch(), batch()], cfg, 0, steps)
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"]) and step["loss_speed"] > 0
        assert step["feat_u_w"].shape == (B, 8, 32, 32) and step["logit_u_w"].shape == (B, 4, 32, 32)
        assert step["feat_u_s1"].shape == (B, 8, 32, 32) and step["feat_u_s1"].requires_grad
        assert not step["feat_u_w"].requires_grad
        assert step["plan1"].index.shape == (B, 4, 4)
        for mixed in (step["img_u_s1"], step["img_u_s2"]):  # in-batch mixing never duplicates a sample
            assert not any(torch.equal(mixed[a], mixed[b]) for a in range(B) for b in range(a))
    last = steps[-1]
    for tap in (last["feat_s"], last["logit_s"], last["feat_t"], last["logit_t"]):
        assert len(tap) == 0  # all popped; validation forwards kept nothing
        tap.close()
    net, ema = model, last["model_ema"].module
    assert not net.head.scratch.refinenet1._forward_hooks and not ema.head.scratch.refinenet1._forward_hooks
    # the EMA teacher moved toward the student (its update is untouched by the taps)
    assert not torch.equal(ema.backbone.weight, net.backbone.weight)
