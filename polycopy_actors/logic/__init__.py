"""Pure logic (no threads, no I/O): the token bucket, the earliest-deadline schedule, position
reconciliation and close reasons, a wallet's state, and the record of one poll."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {
    "bucket": ["TokenBucket"],
    "poll_result": ["PollResult"],
    "reconcile": ["("],
    "schedule": ["Schedule"],
    "wallet_state": ["KindBackoff", "WalletState"],
})
