"""``python -m polycopy_actors``: see :mod:`polycopy_actors.app.cli`."""

import sys

from polycopy_actors.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
