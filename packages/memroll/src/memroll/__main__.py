"""``python -m memroll``: the ``memroll`` command."""

import sys

from memroll.cli import main

if __name__ == "__main__":
    sys.exit(main())
