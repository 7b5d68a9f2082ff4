"""``python -m sam2long``: the ``sam2long`` command."""

import sys

from sam2long.cli import main

sys.exit(main())
