"""Semi-supervised VOS inference over a dataset with SAM 2 or SAM2Long.

A script entry point of :func:`sam2long.vos.cli.main` (also installed as ``sam2long-vos``);
see ``python tools/vos_inference.py --help``.
"""

import sys

from sam2long.vos.cli import main

if __name__ == "__main__":
    sys.exit(main())
