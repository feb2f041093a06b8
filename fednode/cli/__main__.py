"""``python -m fednode.cli``: the same as the ``fednode`` console script."""

import sys

from . import main

sys.exit(main())
