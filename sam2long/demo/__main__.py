"""``python -m sam2long.demo``: the demo server."""

import sys

from sam2long.demo import main

sys.exit(main())
