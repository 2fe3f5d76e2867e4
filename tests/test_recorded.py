"""2-D behaviour, bit for bit, against outputs recorded from the code that trained the `shapes` study.

``recorded_2d.pt`` was written by :func:`outputs` running on the package and example of commit
``6735560`` (training-code fingerprint ``a972708f92ec0867``, the study's, stored in the file as
``code``); this test recomputes them with today's code, and ``benchmarks/ablation.py --report``
states it beside a study trained by that code. The file's ``verified`` lists other training codes
this test passed on (the `streets` study's ``e6aa026d61cf01c5`` and its calibration's
``80e79534d0e50b42``), so a study trained by one of them stands for any later code that passes too.
Plans (which view every cell or pixel comes from) must be equal on any machine. Floating results (entropies, losses, gradients, two training steps of the example) are compared
bit for bit on the CPU vector ISA they were recorded on, and within 1e-5 elsewhere (another ISA
rounds differently: ``benchmarks/ablation.py`` treats that as rounding noise too).

Re-record only when a change is meant to alter 2-D results, and say so in CHANGELOG.md:
``python tests/test_recorded.py --record`` (with the package and examples of the commit to record).
"""

import sys
from argparse import Namespace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "recorded_2d.pt"


def _probs(g, B, K, h, w):
    scale = torch.rand(B, 1, h, w, generator=g) * 6
    return (torch.randn(B, K, h, w, generator=g) * scale).softmax(1)


def outputs() -> dict:
    """Every recorded output, by name: plans of every mixer and mode, entropies, SPEEDLoss values
    and gradients, and two optimizer steps of the example's UniMatch loss for each mixer."""
    from entropymix import ClassMix, CutMix, EntropyMix, SPEEDLoss
    from entropymix import functional as F

    out = {}
    configs = [(2, 2, 321, 321, (4, 4), 21, 4), (3, 3, 37, 23, (3, 5), 5, 1), (2, 2, 1, 1, (1, 1), 2, 1),
               (4, 2, 64, 64, (4, 4), 6, 4), (2, 4, 33, 47, (2, 8), 3, 2)]
    for c, (B, V, H, W, grid, K, stride) in enumerate(configs):
        g = torch.Generator().manual_seed(100 + c)
        views = [torch.rand(B, 3, H, W, generator=g) for _ in range(V)]
        h, w = max(grid[0], H // stride), max(grid[1], W // stride)
        probs = [_probs(g, B, K, h, w) for _ in range(V)]
        valid = [None] + [torch.rand(B, H, W, generator=g) < 0.7 for _ in range(V - 1)]
        out[f"entropy/{c}"] = F.entropy(probs[0])
        out[f"patch_entropy/{c}"] = F.patch_entropy(F.entropy(probs[0]), grid, valid=valid[-1] if V > 1 else None)
        for select in ("max", "min", "sample", "random"):
            for p in (1.0, 0.5):
                for use_valid in (False, True):
                    mixer = EntropyMix(grid, select=select, p=p)
                    _, plan = mixer(views, probs=probs, valid=valid if use_valid else None,
                                    generator=torch.Generator().manual_seed(c))
                    out[f"entropymix/{c}/{select}/{p}/{use_valid}"] = plan.index
            _, plan = EntropyMix(grid, select=select)(views, logits=[q.log() for q in probs],
                                                      generator=torch.Generator().manual_seed(c))
            out[f"entropymix-logits/{c}/{select}"] = plan.index
        if V == 2:
            _, plan = CutMix(p=0.5)(views, generator=torch.Generator().manual_seed(c))
            box = plan.index.bool()  # a box is known from the rows and columns it spans
            out[f"cutmix/{c}/rows"], out[f"cutmix/{c}/cols"] = box.any(2), box.any(1)
            _, plan = ClassMix(p=0.5)(views, probs=probs, valid=valid, generator=torch.Generator().manual_seed(c))
            out[f"classmix/{c}"] = plan.index.bool()

    for c, (B, K, D, h, w) in enumerate([(2, 5, 8, 9, 11), (2, 7, 16, 9, 9), (1, 2, 4, 1, 1)]):
        g = torch.Generator().manual_seed(200 + c)
        s_logits = (torch.randn(B, K, h, w, generator=g) * 3).requires_grad_()
        t_logits = torch.randn(B, K, h, w, generator=g) * 3
        s_feats = torch.randn(B, D, h, w, generator=g).requires_grad_()
        t_feats = torch.randn(B, D + 3, h, w, generator=g)
        valid = torch.randint(0, 4, (B, 2 * h, 2 * w), generator=g).masked_fill(torch.rand(B, 2 * h, 2 * w, generator=g) < 0.3, 255)
        for name, crit in (("default", SPEEDLoss()), ("T2-noweight", SPEEDLoss(temperature=2.0, entropy_weighting=False)),
                           ("naive", SPEEDLoss(relation_method="naive"))):
            loss = crit(s_logits, t_logits, s_feats, t_feats, valid=valid)
            gl, gf = torch.autograd.grad(loss, (s_logits, s_feats))
            out[f"speed/{c}/{name}"] = loss.detach()
            out[f"speed-grad-logits/{c}/{name}"] = gl
            out[f"speed-grad-feats/{c}/{name}"] = gf

    out.update(_example_steps())
    return out


def _example_steps() -> dict:
    """Two steps of the example's UniMatch loss (``training_loss``) with AdamW, for each mixer,
    with and without SPEEDLoss, on a tiny `shapes` batch."""
    examples = str(HERE.parent / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    from data import make_shapes
    from model import DeepLabV3Plus
    from unimatch_loop import build_mixers, strong_augmentation, training_loss

    from entropymix import SPEEDLoss

    out = {}
    x, y = make_shapes(12, size=32, seed=3)
    ignore = torch.zeros(4, 32, 32, dtype=torch.long)
    batch = (x[:4], y[:4], x[4:8], ignore, [(x[8:12], ignore)])
    for mix in ("cutmix", "entropymix", "classmix"):
        for speed in (False, True):
            torch.manual_seed(0)
            model = DeepLabV3Plus(6, width=8, feature_dim=16)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            args = Namespace(method="unimatch", mix=mix, grid=4, first_select="max", second_select="sample",
                             conf_thresh=0.5, speed_weight=0.5 if speed else 0.0)
            mixers, strong, gen = build_mixers(args), strong_augmentation(32), torch.Generator().manual_seed(1)
            parts = []
            for _ in range(2):
                loss, terms, plans = training_loss(model, batch, args, mixers, SPEEDLoss() if speed else None, strong, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                parts.append(torch.stack([loss.detach(), *[t.detach() for t in terms]]))
            key = f"example/{mix}/{'speed' if speed else 'nospeed'}"
            out[key] = torch.stack(parts)
            out[key + "/plans"] = torch.stack([p.index.flatten() for p in plans]).bool()  # 2 views: 0 or 1
    return out


def test_2d_outputs_are_bit_identical_to_the_recorded_ones():
    saved = torch.load(RECORDED)
    recorded, isa = saved["outputs"], saved["cpu_capability"]
    exact = isa == torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: the thread count splits float reductions differently
    try:
        now = outputs()
    finally:
        torch.set_num_threads(threads)
    assert set(now) == set(recorded)
    for name, want in recorded.items():
        got = now[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if exact or not got.is_floating_point():
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_every_study_was_trained_by_code_that_gives_the_recorded_outputs():
    """Each study's training code, and each calibration run's, is the recorded one or one verified
    against it (``verified``: a code this test passed on, with why): so a report that says a study
    stands for today's code, or a calibration for its study, the 2-D computation unchanged, rests on
    this test."""
    import json
    saved = torch.load(RECORDED)
    known = {saved["code"], *saved.get("verified", {})}
    assert all(isinstance(why, str) and why for why in saved.get("verified", {}).values())
    results = HERE.parent / "benchmarks" / "results"
    for name in ("ablation.json", "ablation-streets.json", "share-selection.json",  # the studies
                 "share-confirmation-streets.json", "share-confirmation-shapes.json"):
        path = results / name
        if path.exists():
            assert json.loads(path.read_text())["provenance"]["code"] in known, name
    for runs in ("ablation-calibration-runs", "ablation-streets-calibration-runs"):  # and the runs that sized them
        for path in sorted(results.glob(f"{runs}/*/*.json")):
            assert json.loads(path.read_text())["provenance"]["code"] in known, path.name


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_recorded.py --record")
    import entropymix
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    from ablation import provenance  # the training-code fingerprint of the tree being recorded
    torch.set_num_threads(1)
    code = provenance()["code"]
    torch.save({"outputs": outputs(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "code": code,
                "verified": {}}, RECORDED)  # a new recording: codes verified against the old one no longer count
    print(f"recorded {RECORDED} from {entropymix.__file__} (training code {code})")
