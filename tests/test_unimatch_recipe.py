"""examples/UNIMATCH.md, exercised: its hunks, as printed, are applied to a UniMatch-style
``main()`` with the same lines and indentation, which then trains two steps of a model whose
forward returns logits only (the hook supplies SPEEDLoss's features)."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from patching import apply, hunks

RECIPE = (Path(__file__).resolve().parents[1] / "examples" / "UNIMATCH.md").read_text()


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


class FakeDDP(nn.Module):
    """What DistributedDataParallel looks like to the step (a ``module`` attribute), without a process group."""

    def __init__(self, module, device_ids=None, output_device=None, find_unused_parameters=False):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# UniMatch's main(), cut to what the recipe touches, with UniMatch's lines and indentation (the
# .cuda() moves and the logging are left out). Written for this test; the recipe is applied to it.
SOURCE = """
def main(model, optimizer, loader, cfg, local_rank, steps):
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = nn.CrossEntropyLoss(reduction='none')

    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank],
                                                      output_device=local_rank, find_unused_parameters=False)

    for epoch in range(1):
        for i, ((img_x, mask_x),
                (img_u_w, img_u_s1, img_u_s2, ignore_mask, cutmix_box1, cutmix_box2),
                (img_u_w_mix, img_u_s1_mix, img_u_s2_mix, ignore_mask_mix, _, _)) in enumerate(loader):

            with torch.no_grad():
                model.eval()

                pred_u_w_mix = model(img_u_w_mix).detach()
                conf_u_w_mix = pred_u_w_mix.softmax(dim=1).max(dim=1)[0]
                mask_u_w_mix = pred_u_w_mix.argmax(dim=1)

            img_u_s1[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1] = \\
                img_u_s1_mix[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1]
            img_u_s2[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1] = \\
                img_u_s2_mix[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1]

            model.train()

            num_lb, num_ulb = img_x.shape[0], img_u_w.shape[0]

            preds, preds_fp = model(torch.cat((img_x, img_u_w)), True)
            pred_x, pred_u_w = preds.split([num_lb, num_ulb])
            pred_u_w_fp = preds_fp[num_lb:]

            pred_u_s1, pred_u_s2 = model(torch.cat((img_u_s1, img_u_s2))).chunk(2)

            pred_u_w = pred_u_w.detach()
            conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
            mask_u_w = pred_u_w.argmax(dim=1)

            mask_u_w_cutmixed1, conf_u_w_cutmixed1, ignore_mask_cutmixed1 = \\
                mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
            mask_u_w_cutmixed2, conf_u_w_cutmixed2, ignore_mask_cutmixed2 = \\
                mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()

            mask_u_w_cutmixed1[cutmix_box1 == 1] = mask_u_w_mix[cutmix_box1 == 1]
            conf_u_w_cutmixed1[cutmix_box1 == 1] = conf_u_w_mix[cutmix_box1 == 1]
            ignore_mask_cutmixed1[cutmix_box1 == 1] = ignore_mask_mix[cutmix_box1 == 1]

            mask_u_w_cutmixed2[cutmix_box2 == 1] = mask_u_w_mix[cutmix_box2 == 1]
            conf_u_w_cutmixed2[cutmix_box2 == 1] = conf_u_w_mix[cutmix_box2 == 1]
            ignore_mask_cutmixed2[cutmix_box2 == 1] = ignore_mask_mix[cutmix_box2 == 1]

            loss_x = criterion_l(pred_x, mask_x)

            loss_u_s1 = criterion_u(pred_u_s1, mask_u_w_cutmixed1)
            loss_u_s1 = loss_u_s1 * ((conf_u_w_cutmixed1 >= cfg['conf_thresh']) & (ignore_mask_cutmixed1 != 255))
            loss_u_s1 = torch.sum(loss_u_s1) / torch.sum(ignore_mask_cutmixed1 != 255).item()

            loss_u_s2 = criterion_u(pred_u_s2, mask_u_w_cutmixed2)
            loss_u_s2 = loss_u_s2 * ((conf_u_w_cutmixed2 >= cfg['conf_thresh']) & (ignore_mask_cutmixed2 != 255))
            loss_u_s2 = torch.sum(loss_u_s2) / torch.sum(ignore_mask_cutmixed2 != 255).item()

            loss_u_w_fp = criterion_u(pred_u_w_fp, mask_u_w)
            loss_u_w_fp = loss_u_w_fp * ((conf_u_w >= cfg['conf_thresh']) & (ignore_mask != 255))
            loss_u_w_fp = torch.sum(loss_u_w_fp) / torch.sum(ignore_mask != 255).item()

            loss = (loss_x + loss_u_s1 * 0.25 + loss_u_s2 * 0.25 + loss_u_w_fp * 0.5) / 2.0

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(dict(locals()))
            with torch.no_grad():  # validation forwards in between: the tap must keep nothing of them
                model.eval()
                [model(img_u_w[:1]) for _ in range(20)]
                model.train()
"""


def test_recipe_has_six_hunks_that_each_apply_once():
    assert len(hunks(RECIPE)) == 6
    patched = SOURCE
    for hunk in hunks(RECIPE):
        patched = apply(patched, hunk)
    compile(patched, "unimatch.py", "exec")  # pastes as printed: no IndentationError
    assert "cutmix_box1 ==" not in patched and "FeatureTap" in patched


def test_two_unimatch_steps_with_the_recipe_on_a_logits_only_model(monkeypatch):
    patched = SOURCE
    for hunk in hunks(RECIPE):
        patched = apply(patched, hunk)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    env = {"torch": torch, "nn": nn, "F": F}
    exec(compile(patched, "unimatch.py", "exec"), env)
    torch.manual_seed(0)
    model = TinyDeepLabV3Plus()
    g = torch.Generator().manual_seed(0)
    B = 2

    def batch():
        r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
        box = (torch.rand(B, 32, 32, generator=g) < 0.3).long()
        ignore_mix = torch.zeros(B, 32, 32, dtype=torch.long).index_fill_(2, torch.arange(24, 32), 255)
        return ((r(B, 3, 32, 32), torch.randint(0, 4, (B, 32, 32), generator=g)),
                (r(B, 3, 32, 32), r(B, 3, 32, 32), r(B, 3, 32, 32), torch.zeros(B, 32, 32, dtype=torch.long), box, box),
                (r(B, 3, 32, 32), r(B, 3, 32, 32), r(B, 3, 32, 32), ignore_mix, box, box))
    steps = []
    env["main"](model, torch.optim.SGD(model.parameters(), lr=0.01), [batch(), batch()], {"conf_thresh": 0.5}, 0, steps)
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"]) and step["loss_speed"] > 0
        assert step["feat_u_s1"].shape == (B, 12, 16, 16) and step["feat_u_w"].shape == (B, 12, 16, 16)
        assert step["feat_u_s1"].requires_grad and not step["feat_u_w"].requires_grad
        assert step["pred_u_w_eval"].shape == step["pred_u_w_mix"].shape == (B, 4, 32, 32)
    tap = steps[-1]["tap"]
    assert len(tap) == 0  # every record popped or cleared; the validation forwards recorded nothing
    tap.close()
    assert not model.fuse._forward_hooks

