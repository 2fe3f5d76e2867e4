"""examples/UNIMATCH.md, exercised: its `+` lines run inside a UniMatch-style step on a model
whose forward returns logits only (the hook supplies SPEEDLoss's features)."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RECIPE = (Path(__file__).resolve().parents[1] / "examples" / "UNIMATCH.md").read_text()
HUNKS = ["\n".join(line[1:] for line in block.splitlines() if line.startswith("+"))
         for block in re.findall(r"```diff\n(.*?)```", RECIPE, re.S)]


def dedent(code: str) -> str:
    lines = [line for line in code.splitlines() if line.strip()]
    pad = min(len(line) - len(line.lstrip()) for line in lines)
    return "\n".join(line[pad:] for line in lines)


class TinyDeepLabV3Plus(nn.Module):
    """DeepLabV3+'s structure (backbone c1/c4, head, reduce, fuse, classifier, need_fp), logits only."""

    def __init__(self, nclass=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.classifier = nn.Conv2d(12, nclass, 1)

    def forward(self, x, need_fp=False):
        h, w = x.shape[-2:]
        c1 = self.stem(x)
        c4 = self.deep(c1)
        if need_fp:
            outs = self._decode(torch.cat((c1, nn.Dropout2d(0.5)(c1))), torch.cat((c4, nn.Dropout2d(0.5)(c4))))
            return F.interpolate(outs, (h, w), mode="bilinear", align_corners=True).chunk(2)
        return F.interpolate(self._decode(c1, c4), (h, w), mode="bilinear", align_corners=True)

    def _decode(self, c1, c4):
        c4 = F.interpolate(self.head(c4), c1.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([self.reduce(c1), c4], 1)))


# A UniMatch-style iteration written for this test; {hunkN} marks where the recipe's lines go.
STEP = """
{hunk1_step_start}
with torch.no_grad():
    model.eval()
    pred_u_w_mix = model(img_u_w_mix).detach()
    {hunk1_teacher}
    conf_u_w_mix, mask_u_w_mix = pred_u_w_mix.softmax(1).max(1)
model.train()
num_lb, num_ulb = img_x.shape[0], img_u_w.shape[0]
preds, preds_fp = model(torch.cat((img_x, img_u_w)), True)
pred_x, pred_u_w = preds.split([num_lb, num_ulb])
pred_u_w_fp = preds_fp[num_lb:]
{hunk3}
pred_u_w = pred_u_w.detach()
conf_u_w, mask_u_w = pred_u_w.softmax(1).max(1)
{hunk4}
{hunk5_replays}
loss_x = F.cross_entropy(pred_x, mask_x, ignore_index=255)
def unsup(pred, target, conf, ign):
    loss = F.cross_entropy(pred, target, reduction="none") * ((conf >= 0.5) & (ign != 255))
    return loss.sum() / (ign != 255).sum().clamp_min(1)
loss_u_s1 = unsup(pred_u_s1, mask_u_w_cutmixed1, conf_u_w_cutmixed1, ignore_mask_cutmixed1)
loss_u_s2 = unsup(pred_u_s2, mask_u_w_cutmixed2, conf_u_w_cutmixed2, ignore_mask_cutmixed2)
loss_u_w_fp = unsup(pred_u_w_fp, mask_u_w, conf_u_w, ignore_mask)
{hunk5_total}
optimizer.zero_grad()
loss.backward()
optimizer.step()
"""


def test_recipe_has_the_expected_hunks():
    # five hunks; the fifth comes in two blocks (the replays, then the total loss)
    assert len(HUNKS) == 6 and "FeatureTap" in HUNKS[0] and "mix1(" in HUNKS[4] and "loss_speed" in HUNKS[5]
    assert HUNKS[2] == ""  # the box pastes go and nothing replaces them there


def test_two_unimatch_steps_with_the_recipe_on_a_logits_only_model():
    torch.manual_seed(0)
    model = TinyDeepLabV3Plus()
    env = {"torch": torch, "F": F, "model": model,
           "optimizer": torch.optim.SGD(model.parameters(), lr=0.01)}
    exec(dedent(HUNKS[0]), env)
    step_start, teacher = HUNKS[1].splitlines()
    step = STEP.format(hunk1_step_start=step_start.strip(), hunk1_teacher=teacher.strip(), hunk3="",
                       hunk4=dedent(HUNKS[3]), hunk5_replays=dedent(HUNKS[4]), hunk5_total=dedent(HUNKS[5]))
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(2):
        B = 2
        env.update(img_x=torch.rand(B, 3, 32, 32, generator=g), mask_x=torch.randint(0, 4, (B, 32, 32), generator=g),
                   img_u_w=torch.rand(B, 3, 32, 32, generator=g), img_u_w_mix=torch.rand(B, 3, 32, 32, generator=g),
                   img_u_s1=torch.rand(B, 3, 32, 32, generator=g), img_u_s2=torch.rand(B, 3, 32, 32, generator=g),
                   img_u_s1_mix=torch.rand(B, 3, 32, 32, generator=g),
                   img_u_s2_mix=torch.rand(B, 3, 32, 32, generator=g),
                   ignore_mask=torch.zeros(B, 32, 32, dtype=torch.long),
                   ignore_mask_mix=torch.zeros(B, 32, 32, dtype=torch.long).index_fill_(2, torch.arange(24, 32), 255))
        model(torch.rand(1, 3, 32, 32))  # a stray forward (e.g. validation) that the step must not mistake
        exec(step, env)
        assert len(env["tap"]) == 0 and torch.isfinite(env["loss"]) and env["loss_speed"] > 0
        assert env["feat_u_s1"].shape == (B, 12, 16, 16) and env["feat_u_w"].shape == (B, 12, 16, 16)
        losses.append(float(env["loss"]))
    env["tap"].close()
    assert not model.fuse._forward_hooks
