"""UniMatch-style semi-supervised segmentation with EntropyMix and SPEEDLoss.

Runs out of the box on the embedded ``shapes`` dataset (generated, nothing to download):

    python examples/train.py                                   # UniMatch + EntropyMix + SPEEDLoss
    python examples/train.py --method supervised               # the labeled images alone
    python examples/train.py --mix cutmix --no-speed           # plain UniMatch
    torchrun --nproc_per_node=2 examples/train.py              # DDP (gloo on CPU, nccl on GPU)

and on UniMatch's PASCAL VOC / Cityscapes layouts:

    python examples/train.py --dataset pascal --data-root VOC2012 \\
        --labeled-ids splits/pascal/92/labeled.txt --unlabeled-ids splits/pascal/92/unlabeled.txt \\
        --val-ids splits/pascal/val.txt --crop-size 321 --batch-size 8

The loop itself is ``unimatch_loop.py`` (read it top to bottom); this file parses the command
line first, so ``--help`` and argument errors answer before torch is imported.
"""

import sys

from options import EXAMPLE, parse_args

if __name__ == "__main__":
    args = parse_args()
    from data import DataError
    from unimatch_loop import main
    try:
        main(args=args)
    except DataError as err:  # a data problem is a one-line message, not a traceback
        sys.exit(f"{EXAMPLE}: error: {err}")
