"""The actor tree of one process (DESIGN.md §2): RootSupervisor (rest_for_one) over RateLimiter,
DbWriter and the PollerPool (one_for_one) of WalletPollers; :class:`ActorSystem` runs it."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {"tree": ["ActorSystem"]})
