"""Lazy re-exports for the subpackages' ``__init__`` (PEP 562).

Why lazy: in a sharded run ``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is
first imported, and the command line decides that only after reading the configuration. An eager
``__init__`` would import the metrics as a side effect of importing any light module of its package
(``polycopy_actors.api.wallets`` would pull in the HTTP client and its metrics). With these, a name
is imported from its module when it is first used: ``from polycopy_actors.api import Position``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, exports: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package`` whose public names live in the given modules."""
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return sorted(where), getattr_
