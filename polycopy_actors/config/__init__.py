"""Configuration: the schema (frozen dataclasses) and the layered loader (YAML files, environment)."""

from polycopy_actors.config.loader import CONFIG_DIR, ENV_OVERRIDES, load_settings
from polycopy_actors.config.schema import (
    ApiSettings,
    ConfigError,
    DbSettings,
    DemoSettings,
    DiscoverySettings,
    FeedSettings,
    Interval,
    LoggingSettings,
    MetricsSettings,
    PollerSettings,
    RateLimit,
    ReconcileSettings,
    Settings,
    StreamSettings,
    SupervisionSettings,
    Tiers,
    TierSettings,
    WriterSettings,
)

__all__ = [
    "CONFIG_DIR", "ENV_OVERRIDES", "ApiSettings", "ConfigError", "DbSettings", "DemoSettings", "DiscoverySettings",
    "FeedSettings", "StreamSettings",
    "Interval", "LoggingSettings", "MetricsSettings", "PollerSettings", "RateLimit", "ReconcileSettings", "Settings",
    "SupervisionSettings", "TierSettings", "Tiers", "WriterSettings", "load_settings",
]
