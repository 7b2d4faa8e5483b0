"""PostgreSQL: connecting (configured or embedded), migrations, every query, and the writer's batch."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {
    "connect": ["Database", "connect", "describe_dsn", "make_pool", "open_database", "scrub", "wait_reachable"],
    "migrate": ["MigrationError", "discover", "migrate", "pending", "prepare_schema"],
    "errors": ["DATA_ERRORS", "OUTAGE_ERRORS", "DatabaseUnavailable", "outage_state"],
    "writes": ["WriteBuffer", "write_batch", "write_isolating"],
})
