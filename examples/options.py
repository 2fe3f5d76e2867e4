"""Command line of ``examples/train.py``: argparse only, so ``--help`` and argument errors answer
before torch is imported."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "python train.py"

DESCRIPTION = """UniMatch-style semi-supervised segmentation with EntropyMix and SPEEDLoss.

Runs out of the box on the embedded ``shapes`` dataset (generated, nothing to download):

    python examples/train.py                                   # UniMatch + EntropyMix + SPEEDLoss
    python examples/train.py --method supervised               # the labeled images alone
    python examples/train.py --mix cutmix --no-speed           # plain UniMatch
    torchrun --nproc_per_node=2 examples/train.py              # DDP (gloo on CPU, nccl on GPU)

and on UniMatch's PASCAL VOC / Cityscapes layouts:

    python examples/train.py --dataset pascal --data-root VOC2012 \\
        --labeled-ids splits/pascal/92/labeled.txt --unlabeled-ids splits/pascal/92/unlabeled.txt \\
        --val-ids splits/pascal/val.txt --crop-size 321 --batch-size 8

The loop itself is ``examples/unimatch_loop.py`` (read it top to bottom); ``train.py`` parses
the command line first, so ``--help`` and argument errors answer before torch is imported.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


LAYOUTS = """data layouts (UniMatch's split files: one 'IMAGE MASK' line per sample, paths relative to --data-root):
  pascal      JPEGImages/*.jpg and SegmentationClass/*.png (or SegmentationClassAug/*.png): palette PNGs whose
              index is the class 0..20, 255 on boundaries. A bare id per line means JPEGImages/<id>.jpg and
              SegmentationClass/<id>.png.
  cityscapes  leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png:
              masks must be labelTrainIds (0..18, 255 ignore), made by cityscapesscripts' createTrainIdLabelImgs;
              the raw labelIds masks (0..33) are refused with the file named.
  Unlabeled entries need no mask file. Every listed file is checked before training starts."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION, epilog=LAYOUTS, formatter_class=_Formatter)
    p.add_argument("--method", choices=["supervised", "fixmatch", "unimatch"], default="unimatch",
                   help="training recipe (supervised: the labeled images alone)")
    p.add_argument("--mix", choices=["cutmix", "entropymix", "classmix"], default="entropymix",
                   help="how strong views are mixed with a second unlabeled batch")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="add SPEEDLoss")
    p.add_argument("--speed-weight", type=float, default=0.5, help="weight of SPEEDLoss in the total loss")
    p.add_argument("--speed-terms", choices=["both", "relation", "logit"], default="both",
                   help="SPEEDLoss terms: feature relations, entropy-weighted logit KL, or both")
    p.add_argument("--grid", type=int, default=4, help="EntropyMix grid (G x G)")
    p.add_argument("--second-select", default="sample", choices=["max", "min", "sample", "random"],
                   help="EntropyMix selection of the second strong stream")
    p.add_argument("--first-select", default="max", choices=["max", "min", "sample", "random"],
                   help="EntropyMix selection of the first strong stream (random: grid patches, entropy ignored)")
    p.add_argument("--entropy-scale", type=float, default=1.0,
                   help="EntropyMix's teacher entropies from inputs at this scale: below 1, a separate forward of the "
                        "weak and mixed-in views, downscaled, replaces adding the weak view to UniMatch's eval forward "
                        "(cheaper; comparable entropies, but of smaller inputs: its effect on accuracy is not measured)")
    p.add_argument("--share", type=float, default=None,
                   help="EntropyMix: the fraction of each mixed image's cells taken from the other view (the selection "
                        "picks which cells); default: whatever the selection picks, about half")
    p.add_argument("--views", type=int, default=2, help="EntropyMix views per mixed image (3: a second mixed-in batch)")
    p.add_argument("--conf-thresh", type=float, default=None,
                   help="pseudo-label confidence threshold (default: UniMatch's 0.95 on real data, 0.8 on shapes, "
                        "where the model starts from scratch)")
    p.add_argument("--dataset", choices=["shapes", "streets", "pascal", "cityscapes"], default="shapes",
                   help="shapes and streets (driving scenes) are embedded (generated); the others read the layouts below")
    p.add_argument("--data-root", default=None, help="dataset root (pascal / cityscapes)")
    p.add_argument("--labeled-ids", default=None, help="split file of labeled samples")
    p.add_argument("--unlabeled-ids", default=None, help="split file of unlabeled samples")
    p.add_argument("--val-ids", default=None, help="split file of validation samples")
    p.add_argument("--num-labeled", type=int, default=64, help="shapes / streets: labeled images")
    p.add_argument("--num-unlabeled", type=int, default=768, help="shapes / streets: unlabeled images")
    p.add_argument("--num-val", type=int, default=200, help="shapes / streets: validation images")
    p.add_argument("--crop-size", type=int, default=64, help="training crop (UniMatch: 321 / 513 on VOC, 801 on Cityscapes)")
    p.add_argument("--epochs", type=int, default=20, help="length of the schedule")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="cap iterations per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=8, help="per process, for labeled and unlabeled batches")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (poly decay)")
    p.add_argument("--width", type=int, default=32, help="model width")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--seed", type=int, default=0, help="picks the labeled set, the data order and every random draw")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast on CPU, float16 autocast with a GradScaler on CUDA")
    p.add_argument("--out-dir", default=None, help="default: runs/<dataset>-<method>-<mix>[-speed]-s<seed>")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/latest.pth")
    p.add_argument("--overwrite", action="store_true", help="start again even if <out-dir> holds an earlier run")
    p.add_argument("--stop-after", type=int, default=None,
                   help="exit after this many epochs of the --epochs schedule (continue later with --resume)")
    p.add_argument("--compile-entropy", action=argparse.BooleanOptionalAction, default=False,
                   help="EntropyMix's torch.compile fast path (pays off on large probability maps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.dataset not in ("shapes", "streets"):
        missing = [f"--{k.replace('_', '-')}" for k in ("data_root", "labeled_ids", "unlabeled_ids", "val_ids")
                   if not getattr(args, k)]
        if missing:
            p.error(f"--dataset {args.dataset} needs {', '.join(missing)}")
    if not 0 < args.entropy_scale <= 1:
        p.error(f"--entropy-scale {args.entropy_scale}: a scale in (0, 1]")
    if args.views < 2 or (args.views > 2 and args.mix != "entropymix"):
        p.error(f"--views {args.views}: at least 2, and more than 2 only with --mix entropymix")
    if args.share is not None and (args.mix != "entropymix" or not 0 <= args.share <= 1):
        p.error(f"--share {args.share}: a fraction in [0, 1], with --mix entropymix")
    if args.conf_thresh is None:
        args.conf_thresh = 0.8 if args.dataset in ("shapes", "streets") else 0.95
    if args.out_dir is None:
        share = "" if args.share is None else f"-share{args.share:g}"
        tag = "" if args.method == "supervised" else f"-{args.mix}{share}{'-speed' if args.speed else ''}"
        args.out_dir = f"runs/{args.dataset}-{args.method}{tag}-s{args.seed}"
    ckpt = Path(args.out_dir) / "latest.pth"
    if ckpt.exists() and not (args.resume or args.overwrite):
        p.error(f"{args.out_dir} already holds a run ({ckpt}); pass --resume to continue it, "
                f"or --overwrite to start again and replace it")
    return args
