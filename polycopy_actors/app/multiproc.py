"""The multiprocess metrics directory of a sharded run.

Imports nothing heavy on purpose: the command line calls :func:`prepare_multiprocess_metrics` before
``prometheus_client`` is first imported in the process (it reads ``PROMETHEUS_MULTIPROC_DIR`` once,
at import), and only then imports the modules that define metrics.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_metrics() -> Path:
    """Point prometheus_client at an empty directory shared by the parent and its shards.
    Must run before ``polycopy_actors.observe.metrics`` (or any metric) is imported in this process."""
    if "polycopy_actors.observe.metrics" in sys.modules:
        raise RuntimeError("prepare_multiprocess_metrics() must run before metrics are imported")
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for child in path.iterdir():  # samples of a previous run would be summed in
            if child.is_file() and child.suffix == ".db":
                child.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="polycopy-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    return path


def cleanup_multiprocess_metrics(path: Path) -> None:
    """Remove the directory this run created (not one the user gave)."""
    if path.name.startswith("polycopy-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
