"""Volumetric semi-supervised segmentation in BCP's style with EntropyMix and SPEEDLoss: the command line.

``python examples/train_volumes.py --help`` lists every switch; the loop is ``volume_loop.py``, to
read top to bottom. The command line is parsed first, so ``--help`` and argument errors answer
before torch is imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "python examples/train_volumes.py"

DESCRIPTION = """Mean teacher with bidirectional copy-paste (BCP, CVPR 2023) on 3-D volumes, the copy-paste
made by EntropyMix (or by BCP's own cuboid), with SPEEDLoss on the decoder features.

Runs out of the box on the embedded `organs` dataset: volumes generated from a seed (nothing to
download), structures whose class is their shape (a ball, a tube, a shell), not their intensity,
in a textured, noisy background:

    python examples/train_volumes.py                          # EntropyMix + SPEEDLoss
    python examples/train_volumes.py --mix cutmix --no-speed  # BCP's cuboid: 2/3 of every axis
    torchrun --nproc_per_node=2 examples/train_volumes.py     # DDP (gloo on CPU, nccl on GPU)

Volumes are (B, 1, X, Y, Z), depth last, as in medical code. The first --pretrain-epochs train the
model on the labeled volumes alone (BCP's pre-training stage); the EMA teacher starts from it."""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_volumes.py", description=DESCRIPTION, formatter_class=_Formatter)
    p.add_argument("--mix", choices=["cutmix", "entropymix"], default="entropymix",
                   help="copy-paste by EntropyMix (teacher entropy per cell), or BCP's cuboid (CutMix.bcp: 2/3 of each axis, shared)")
    p.add_argument("--grid", type=int, nargs=3, default=[4, 4, 4], metavar=("G1", "G2", "G3"), help="EntropyMix grid")
    p.add_argument("--share", type=float, default=None,
                   help="EntropyMix: the fraction of cells each direction pastes from the other volume (BCP's cube: "
                        "0.296, 8/27); default: whatever the selection picks, which may be a whole volume")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True, help="add SPEEDLoss")
    p.add_argument("--speed-weight", type=float, default=0.5, help="weight of SPEEDLoss in the total loss")
    p.add_argument("--u-weight", type=float, default=0.5, help="BCP's weight of the pasted (pseudo-labeled) region")
    p.add_argument("--size", type=int, nargs=3, default=[32, 32, 24], metavar=("X", "Y", "Z"), help="volume size")
    p.add_argument("--num-labeled", type=int, default=8, help="labeled volumes")
    p.add_argument("--num-unlabeled", type=int, default=96, help="unlabeled volumes")
    p.add_argument("--num-val", type=int, default=16, help="validation volumes")
    p.add_argument("--epochs", type=int, default=16, help="epochs of semi-supervised training (after pre-training)")
    p.add_argument("--pretrain-epochs", type=int, default=4, help="epochs on the labeled volumes alone first")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="cap iterations per epoch (smoke runs)")
    p.add_argument("--batch-size", type=int, default=4, help="labeled and unlabeled volumes per step and process (even)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--ema", type=float, default=0.99, help="EMA decay of the teacher")
    p.add_argument("--width", type=int, default=16, help="U-Net width (the decoder features SPEEDLoss reads)")
    p.add_argument("--seed", type=int, default=0, help="picks the labeled set, the data order and every random draw")
    p.add_argument("--out-dir", default=None, help="default: runs/organs-<mix>[-speed]-s<seed>")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/latest.pth")
    p.add_argument("--overwrite", action="store_true", help="start again even if <out-dir> holds an earlier run")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this epoch (counting pre-training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.batch_size % 2:
        p.error(f"--batch-size {args.batch_size}: an even number >= 2 (BCP splits every batch in two halves)")
    if min(args.size) < 4 or any(g > s for g, s in zip(args.grid, args.size)):
        p.error(f"--size {args.size} / --grid {args.grid}: sizes of at least 4, grids no larger than the sizes")
    if args.share is not None and (args.mix != "entropymix" or not 0 <= args.share <= 1):
        p.error(f"--share {args.share}: a fraction in [0, 1], with --mix entropymix")
    if args.num_labeled < args.batch_size or args.num_unlabeled < args.batch_size:
        p.error("--num-labeled and --num-unlabeled must each hold at least one batch")
    if args.out_dir is None:
        args.out_dir = f"runs/organs-{args.mix}{'-speed' if args.speed else ''}-s{args.seed}"
    ckpt = Path(args.out_dir) / "latest.pth"
    if ckpt.exists() and not (args.resume or args.overwrite):
        p.error(f"{args.out_dir} already holds a run ({ckpt}); pass --resume to continue it, "
                f"or --overwrite to start again and replace it")
    return args


if __name__ == "__main__":
    cli = parse_args()
    from volume_loop import main
    main(cli)
