import contextlib
import copy
import gc

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from entropymix import FeatureTap
from conftest import DEVICES


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


def test_evaluation_forwards_record_nothing_by_default():
    """The issue's reproduction: 100 no-grad forwards of a tapped model hold no records."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    tap = FeatureTap(m, "0")
    with torch.no_grad():
        for _ in range(100):
            m(torch.rand(1, 3, 64, 64))
    assert len(tap) == 0
    with torch.inference_mode():
        m.eval()
        m(torch.rand(1, 3, 8, 8))
    assert len(tap) == 0


OPS = ["grad", "nograd", "recording", "eval-recording", "pop", "clear", "close"]


@pytest.mark.parametrize("device", DEVICES)
@given(ops=st.lists(st.sampled_from(OPS), max_size=25), detach=st.booleans())
def test_tap_lifecycle_matches_its_contract(ops, detach, device):
    """Any sequence of forwards, pops, clears and a close: the tap holds exactly the outputs of the
    grad-enabled or recording() forwards not popped or cleared, in order; clear() keeps the hook;
    close() drops the records and the hook, and nothing is recorded after it."""
    net = Net().to(device)
    tap = FeatureTap(net, "decoder", detach=detach, max_records=100)
    expected = []  # ids of the inputs whose outputs the tap must hold
    closed = False
    for i, op in enumerate(ops):
        x = torch.full((1, 3, 2, 2), float(i), device=device)
        if op in ("grad", "nograd", "recording", "eval-recording"):
            net.train(op != "eval-recording")
            with torch.set_grad_enabled(op == "grad"), (tap.recording() if "recording" in op
                                                         else contextlib.nullcontext()):
                net(x)
            if not closed and op != "nograd":
                expected.append(i)
        elif op == "pop":
            if expected:
                feat = tap.pop()
                with torch.no_grad():  # the reference forward records nothing
                    want = net.decoder(net.backbone(torch.full((1, 3, 2, 2), float(expected.pop(0)), device=device)))
                torch.testing.assert_close(feat, want)
                assert not (detach and feat.requires_grad)
            else:
                with pytest.raises(RuntimeError, match="no recorded output to pop"):
                    tap.pop()
        elif op == "clear":
            tap.clear()
            expected.clear()
        else:
            tap.close()
            closed, expected = True, []
        assert len(tap) == len(expected)
        assert bool(net.decoder._forward_hooks) == (not closed)


def test_too_many_unpopped_records_raise_a_clear_error():
    net = Net()
    tap = FeatureTap(net, "decoder", max_records=3)
    for _ in range(3):
        net(torch.rand(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"holds 3 records nobody popped \(max_records=3\)"):
        net(torch.rand(1, 3, 4, 4))
    tap.clear()
    net(torch.rand(1, 3, 4, 4))
    assert len(tap) == 1
    with pytest.raises(ValueError, match="max_records must be a positive int"):
        FeatureTap(net, "decoder", max_records=0)


def test_deepcopy_of_a_tapped_model_for_an_ema_teacher_holds_no_hidden_hook():
    net = Net()
    tap = FeatureTap(net, "decoder")
    ema = copy.deepcopy(net)                    # UniMatch V2 / mean-teacher style
    for p in ema.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), tap.recording():
        for _ in range(3):
            ema(torch.rand(1, 3, 4, 4))         # the copy is not the tapped module: nothing recorded
    assert len(tap) == 0
    assert not ema.decoder._forward_hooks       # and its inherited hook removed itself
    net(torch.rand(1, 3, 4, 4))                 # the original still records
    assert len(tap) == 1 and net.decoder._forward_hooks
    ema_tap = FeatureTap(ema, "decoder")        # a copy that should record gets its own tap
    with torch.no_grad(), ema_tap.recording():
        ema(torch.rand(2, 3, 4, 4))
    assert ema_tap.pop().shape == (2, 6, 4, 4) and len(tap) == 1
    tap.close()
    ema_tap.close()


def test_a_dropped_tap_leaves_an_inert_hook_that_removes_itself():
    net = Net()
    FeatureTap(net, "decoder")                  # never closed, garbage at once
    gc.collect()
    net(torch.rand(1, 3, 4, 4))
    assert not net.decoder._forward_hooks


def test_close_matches_find_any_dotted_component():
    class SegformerLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.decode_head = nn.Module()
            self.decode_head.linear_fuse = nn.Conv2d(4, 4, 1)
            self.decode_head.classifier = nn.Conv2d(4, 2, 1)

    with pytest.raises(ValueError, match=r"no submodule named 'fuse'; close matches: 'decode_head.linear_fuse'"):
        FeatureTap(SegformerLike(), "fuse")


def test_recording_blocks_nest():
    """Leaving an inner ``recording()`` keeps the outer one recording; leaving the outer one stops."""
    net = Net()
    tap = FeatureTap(net, "decoder")
    x = torch.rand(1, 3, 2, 2)
    with torch.no_grad():
        with tap.recording():
            with tap.recording():
                net(x)
            net(x)  # still inside the outer block
        net(x)  # outside both: a no-grad forward is not recorded
    assert len(tap) == 2
    tap.close()


def test_leaving_a_with_block_closes_the_tap_which_clear_does_not():
    net = Net()
    with FeatureTap(net, "decoder") as tap:
        net(torch.rand(1, 3, 2, 2))
        tap.clear()  # drops the records, keeps the hook
        assert len(tap) == 0 and not tap.closed and net.decoder._forward_hooks
        net(torch.rand(1, 3, 2, 2))
        assert len(tap) == 1
    assert tap.closed and len(tap) == 0 and not net.decoder._forward_hooks
    net(torch.rand(1, 3, 2, 2))
    assert len(tap) == 0  # nothing recorded after the block


def test_an_exception_inside_recording_restores_the_depth():
    """A teacher forward that raises inside ``recording()`` must not leave the tap recording forever."""
    net = Net()
    tap = FeatureTap(net, "decoder")
    with pytest.raises(RuntimeError, match="teacher failed"):
        with torch.no_grad(), tap.recording():
            with tap.recording():
                raise RuntimeError("teacher failed")
    with torch.no_grad():
        net(torch.rand(1, 3, 2, 2))  # evaluation after the failure: nothing is recorded
    assert len(tap) == 0 and tap._forced == 0
    tap.close()


def test_an_exception_inside_a_with_block_closes_the_tap():
    net = Net()
    with pytest.raises(ValueError, match="step failed"):
        with FeatureTap(net, "decoder") as tap:
            net(torch.rand(1, 3, 2, 2))
            raise ValueError("step failed")
    assert tap.closed and len(tap) == 0 and not net.decoder._forward_hooks
