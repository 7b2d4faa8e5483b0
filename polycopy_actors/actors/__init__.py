"""The actor tree of one process (DESIGN.md §2, §5): RootSupervisor (rest_for_one) over HealthMonitor,
Progress, RateLimiter, DbWriter, DbReader, the PollerPool (one_for_one) of WalletPollers, and the
detectors (StreamReader, FeedTailer, MarketWatcher); :class:`ActorSystem` runs it."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {"tree": ["ActorSystem"]})
