"""Observability: Prometheus metrics (with multiprocess aggregation), health, and their HTTP server."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {
    "health": ["HealthReport", "HealthState"],
    "http": ["MetricsServer"],
})
