"""``python -m polycopy_actors``: see :mod:`polycopy_actors.cli`."""

import sys

from polycopy_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
