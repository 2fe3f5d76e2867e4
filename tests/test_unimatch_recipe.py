"""examples/unimatch.patch, exercised: it is applied to ``tests/upstream/unimatch.py`` (upstream's
lines that the patch touches or uses as context, byte for byte), which then trains two steps of a
model whose forward returns logits only (the hook supplies SPEEDLoss's features); the Markdown
shows the patch's hunks exactly."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pytest
from patching import apply, check_files, have_tools, single_process_gpu_free, tools_accept

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "examples" / "UNIMATCH.md").read_text()
PATCH = (ROOT / "examples" / "unimatch.patch").read_text()
STANDIN = (ROOT / "tests" / "upstream" / "unimatch.py").read_text()
UPSTREAM = "LiheYoung/UniMatch at commit 0324f3dd4a22128105a5eb135d2586c0bb3cc647"


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


def test_patch_names_its_upstream_commit_and_the_markdown_shows_its_hunks():
    check_files(RECIPE, PATCH, UPSTREAM, 4)


def test_patch_applies_to_the_stand_in_and_leaves_no_box_paste():
    patched = apply(STANDIN, PATCH)
    compile(patched, "unimatch.py", "exec")
    assert "cutmix_box1 ==" not in patched and "FeatureTap" in patched


@pytest.mark.skipif(not have_tools(), reason="needs git and GNU patch")
def test_git_apply_and_gnu_patch_accept_the_patch_on_the_stand_in(tmp_path):
    tools_accept(tmp_path, "unimatch.py", STANDIN, PATCH)


def test_two_unimatch_steps_with_the_recipe_on_a_logits_only_model(monkeypatch):
    patched = apply(STANDIN, PATCH)
    single_process_gpu_free(monkeypatch)
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
    env["main"](model, torch.optim.SGD(model.parameters(), lr=0.01), [batch(), batch()], {"conf_thresh": 0.5, "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}}, 0, steps)
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

