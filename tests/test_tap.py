import pytest
import torch
from torch import nn

from entropymix import FeatureTap


class Net(nn.Module):
    """A segmenter whose forward returns logits only, as stock models do."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.decoder = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.classifier(self.decoder(self.backbone(x)))


def test_tap_records_every_forward_in_order_and_keeps_the_graph():
    net = Net()
    xs = [torch.rand(n, 3, 5, 7) for n in (1, 2, 3)]
    with FeatureTap(net, "decoder") as tap:
        outs = [net(x) for x in xs]
        assert len(tap) == 3
        feats = [tap.pop() for _ in xs]
    for x, out, f in zip(xs, outs, feats):
        assert f.shape == (x.shape[0], 6, 5, 7) and f.requires_grad
        torch.testing.assert_close(net.classifier(f), out)
    feats[0].sum().backward()
    assert net.backbone.weight.grad is not None


def test_tap_closes_without_leaving_a_hook_and_detach_option():
    net = Net()
    tap = FeatureTap(net, "decoder.0", detach=True)
    net(torch.rand(1, 3, 4, 4))
    assert not tap.pop().requires_grad
    tap.close()
    assert not net.decoder[0]._forward_hooks
    net(torch.rand(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"no recorded output to pop \(tap closed\)"):
        tap.pop()


def test_tap_finds_names_through_ddp_style_wrappers():
    class Wrapper(nn.Module):  # what DDP / DataParallel look like to named_modules()
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    net = Net()
    wrapped = Wrapper(net)
    for model, name in ((wrapped, "decoder"), (wrapped, "module.decoder"), (net, "module.decoder")):
        with FeatureTap(model, name) as tap:
            model(torch.rand(1, 3, 4, 4))
            assert tap.module is net.decoder and tap.pop().shape == (1, 6, 4, 4)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"no submodule named 'decodr'; close matches: 'decoder'"):
        FeatureTap(Net(), "decodr")
    with pytest.raises(ValueError, match=r"no submodule named 'head.0'; close matches: 'decoder.0'"):
        FeatureTap(Net(), "head.0")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FeatureTap(lambda x: x, "decoder")
