"""A UniMatch-style step around Hugging Face ``transformers``' SegFormer, built from a small config
(no download): the tap's name, ``ModelOutput`` handling, logits at 1/4 resolution passed to the
mixer as they are, and plans replayed at full resolution. Skips without ``transformers``
(``pip install -e ".[hf]"``)."""

import pytest
import torch
import torch.nn.functional as F

from entropymix import EntropyMix, FeatureTap, SPEEDLoss

transformers = pytest.importorskip("transformers")


def tiny_segformer(num_labels=4):
    config = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16,
        num_labels=num_labels)
    return transformers.SegformerForSemanticSegmentation(config)


def test_a_unimatch_style_step_on_segformer():
    torch.manual_seed(0)
    model = tiny_segformer()
    with pytest.raises(ValueError, match=r"no submodule named 'fuse'; close matches: 'decode_head.linear_fuse'"):
        FeatureTap(model, "fuse")
    tap = FeatureTap(model, "decode_head.linear_fuse")
    mix, speed = EntropyMix(grid=4), SPEEDLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    B, S = 2, 64
    img_u_w, img_m_w, img_u_s, img_m_s = torch.rand(4, B, 3, S, S, generator=g)
    ignore_w = torch.zeros(B, S, S, dtype=torch.long)
    ignore_m = ignore_w.index_fill(2, torch.arange(48, 64), 255)  # padding on the right

    model.eval()  # the teachers of both views in one mode
    with torch.no_grad(), tap.recording():
        out = model(pixel_values=torch.cat([img_u_w, img_m_w]))   # a ModelOutput: .logits at 1/4
        logits_w, logits_m = out.logits.chunk(2)
        feats_w, feats_m = tap.pop().chunk(2)
    model.train()
    assert logits_w.shape == (B, 4, S // 4, S // 4)
    mixed, plan = mix([img_u_s, img_m_s], logits=[logits_w, logits_m], valid=[ignore_w, ignore_m])
    assert mixed.shape == (B, 3, S, S)
    # the plan chose cells on the 1/4 maps and replays them at full resolution on the images
    src = plan.source_map((S, S))
    assert torch.equal(mixed, torch.where(src[:, None] == 1, img_m_s, img_u_s))
    conf_w, label_w = logits_w.softmax(1).max(1)
    conf_m, label_m = logits_m.softmax(1).max(1)
    student = model(pixel_values=mixed)
    feats_s = tap.pop()
    label, conf = plan.apply([label_w, label_m]), plan.apply([conf_w, conf_m])
    valid = plan.apply([ignore_w, ignore_m]) != 255          # full resolution
    valid_q = F.interpolate(valid[:, None].float(), size=label.shape[-2:]).bool()[:, 0]
    loss_u = (F.cross_entropy(student.logits, label, reduction="none") * ((conf >= 0.2) & valid_q)).sum() / valid_q.sum()
    loss_speed = speed(student.logits, plan.apply([logits_w, logits_m]), feats_s, plan.apply([feats_w, feats_m]),
                       valid=valid)
    loss = loss_u + 0.5 * loss_speed
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and loss_speed > 0 and len(tap) == 0
    assert model.decode_head.linear_fuse.weight.grad is not None
    with torch.no_grad():  # evaluation keeps nothing
        model.eval()
        model(pixel_values=img_u_w)
    assert len(tap) == 0
    tap.close()
