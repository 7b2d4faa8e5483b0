"""polycopy_actors: keeps PostgreSQL current with what Polymarket traders do.

Public entry points are the command line (``python -m polycopy_actors``) and
:func:`polycopy_actors.app.run.run_tier_command` for running a tier from Python.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The project root: ``config/`` and ``sql/`` live beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["PROJECT_ROOT", "__version__"]
