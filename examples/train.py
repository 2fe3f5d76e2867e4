"""UniMatch-style semi-supervised segmentation with EntropyMix and SPEEDLoss: the command line.

``python examples/train.py --help`` says what it runs and lists every switch (``options.py``);
the loop itself is ``unimatch_loop.py``, to read top to bottom. The command line is parsed
first, so ``--help`` and argument errors answer before torch is imported.
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
