"""examples/UNIMATCH_V2.md, exercised: its hunks, as printed, are applied to a UniMatch-V2-style
``main()`` with the same lines and indentation, which then trains two steps of a DINOv2 + DPT-like
stand-in with an EMA teacher made by ``deepcopy`` (the taps supply SPEEDLoss's inputs)."""

from copy import deepcopy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from patching import apply, hunks

RECIPE = (Path(__file__).resolve().parents[1] / "examples" / "UNIMATCH_V2.md").read_text()


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


# UniMatch V2's main(), cut to what the recipe touches, with V2's lines and indentation (the
# .cuda() moves, logging and checkpoints are left out). Written for this test.
SOURCE = """
def main(model, optimizer, loader, cfg, steps):
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = nn.CrossEntropyLoss(reduction='none')

    model_ema = deepcopy(model)
    model_ema.eval()
    for param in model_ema.parameters():
        param.requires_grad = False

    for epoch in range(1):
        model.train()

        for i, ((img_x, mask_x),
                (img_u_w, img_u_s1, img_u_s2, ignore_mask, cutmix_box1, cutmix_box2)) in enumerate(loader):
            
            with torch.no_grad():
                pred_u_w = model_ema(img_u_w).detach()
                conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
                mask_u_w = pred_u_w.argmax(dim=1)
            
            img_u_s1[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1] = img_u_s1.flip(0)[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1]
            img_u_s2[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1] = img_u_s2.flip(0)[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1]
            
            pred_x = model(img_x)
            pred_u_s1, pred_u_s2 = model(torch.cat((img_u_s1, img_u_s2)), comp_drop=True).chunk(2)
            
            mask_u_w_cutmixed1, conf_u_w_cutmixed1, ignore_mask_cutmixed1 = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
            mask_u_w_cutmixed2, conf_u_w_cutmixed2, ignore_mask_cutmixed2 = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()

            mask_u_w_cutmixed1[cutmix_box1 == 1] = mask_u_w.flip(0)[cutmix_box1 == 1]
            conf_u_w_cutmixed1[cutmix_box1 == 1] = conf_u_w.flip(0)[cutmix_box1 == 1]
            ignore_mask_cutmixed1[cutmix_box1 == 1] = ignore_mask.flip(0)[cutmix_box1 == 1]
            
            mask_u_w_cutmixed2[cutmix_box2 == 1] = mask_u_w.flip(0)[cutmix_box2 == 1]
            conf_u_w_cutmixed2[cutmix_box2 == 1] = conf_u_w.flip(0)[cutmix_box2 == 1]
            ignore_mask_cutmixed2[cutmix_box2 == 1] = ignore_mask.flip(0)[cutmix_box2 == 1]
            
            loss_x = criterion_l(pred_x, mask_x)

            loss_u_s1 = criterion_u(pred_u_s1, mask_u_w_cutmixed1)
            loss_u_s1 = loss_u_s1 * ((conf_u_w_cutmixed1 >= cfg['conf_thresh']) & (ignore_mask_cutmixed1 != 255))
            loss_u_s1 = loss_u_s1.sum() / (ignore_mask_cutmixed1 != 255).sum().item()
            
            loss_u_s2 = criterion_u(pred_u_s2, mask_u_w_cutmixed2)
            loss_u_s2 = loss_u_s2 * ((conf_u_w_cutmixed2 >= cfg['conf_thresh']) & (ignore_mask_cutmixed2 != 255))
            loss_u_s2 = loss_u_s2.sum() / (ignore_mask_cutmixed2 != 255).sum().item()
            
            loss_u_s = (loss_u_s1 + loss_u_s2) / 2.0
            
            loss = (loss_x + loss_u_s) / 2.0
            
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            iters = epoch * len(loader) + i
            ema_ratio = min(1 - 1 / (iters + 1), 0.996)
            
            for param, param_ema in zip(model.parameters(), model_ema.parameters()):
                param_ema.copy_(param_ema * ema_ratio + param.detach() * (1 - ema_ratio))
            for buffer, buffer_ema in zip(model.buffers(), model_ema.buffers()):
                buffer_ema.copy_(buffer_ema * ema_ratio + buffer.detach() * (1 - ema_ratio))
            steps.append(dict(locals()))
            with torch.no_grad():  # evaluate(model) and evaluate(model_ema): nothing is kept
                [m(img_u_w[:1]) for m in (model, model_ema) for _ in range(10)]
"""


def patched_source() -> str:
    out = SOURCE
    for hunk in hunks(RECIPE):
        out = apply(out, hunk)
    return out


def test_recipe_has_six_hunks_that_each_apply_once():
    assert len(hunks(RECIPE)) == 6
    source = patched_source()
    compile(source, "unimatch_v2.py", "exec")  # pastes as printed: no IndentationError
    assert "flip(0)[cutmix_box1" not in source and "feat_t.recording()" in source


def test_two_unimatch_v2_steps_with_an_ema_teacher_and_a_dpt_like_head():
    env = {"torch": torch, "nn": nn, "deepcopy": deepcopy}
    exec(compile(patched_source(), "unimatch_v2.py", "exec"), env)
    torch.manual_seed(0)
    model = TinyDPT()
    g = torch.Generator().manual_seed(0)
    B, S = 4, 56  # a 4 x 4 patch grid of 14-pixel patches, as DINOv2's

    def batch():
        r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
        box = (torch.rand(B, S, S, generator=g) < 0.3).long()
        ignore = torch.zeros(B, S, S, dtype=torch.long).index_fill_(2, torch.arange(48, 56), 255)
        return ((r(B, 3, S, S), torch.randint(0, 4, (B, S, S), generator=g)),
                (r(B, 3, S, S), r(B, 3, S, S), r(B, 3, S, S), ignore, box, box))
    steps = []
    env["main"](model, torch.optim.AdamW(model.parameters(), lr=1e-3), [batch(), batch()], {"conf_thresh": 0.3}, steps)
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"]) and step["loss_speed"] > 0
        assert step["feat_u_w"].shape == (B, 8, 32, 32) and step["logit_u_w"].shape == (B, 4, 32, 32)
        assert step["feat_u_s1"].shape == (B, 8, 32, 32) and step["feat_u_s1"].requires_grad
        assert not step["feat_u_w"].requires_grad
        assert step["plan1"].index.shape == (B, 4, 4)
    last = steps[-1]
    for tap in (last["feat_s"], last["logit_s"], last["feat_t"], last["logit_t"]):
        assert len(tap) == 0  # all popped; validation forwards kept nothing
        tap.close()
    ema = last["model_ema"]
    assert not model.head.scratch.refinenet1._forward_hooks and not ema.head.scratch.refinenet1._forward_hooks
    # the EMA teacher moved toward the student (its update is untouched by the taps)
    assert not torch.equal(ema.backbone.weight, model.backbone.weight)
