"""Wallet address validation: ``0x`` + 40 hex characters, stored lowercase."""

from __future__ import annotations

import re
from collections.abc import Sequence

from polycopy_actors.config.loader import shown

_WALLET_RE = re.compile(r"0x[0-9a-fA-F]{40}")


class InvalidWallet(ValueError):
    """Raised for a string that is not a wallet address."""


#: Most bad addresses one message lists (each shown escaped and cut: a message is one short line).
LISTED = 3


def normalize_wallet(value: object) -> str:
    """Return ``value`` as a lowercase wallet address or raise :class:`InvalidWallet`."""
    if not isinstance(value, str) or not _WALLET_RE.fullmatch(value):
        raise InvalidWallet(f"invalid wallet address {shown(value)}: expected 0x followed by 40 hex characters")
    return value.lower()


def normalize_wallets(values: Sequence[str]) -> list[str]:
    """Validate every address; raise naming the invalid ones, escaped and cut, at most :data:`LISTED` of
    them (none is accepted if any is bad)."""
    bad: list[str] = []
    good: list[str] = []
    for value in values:
        try:
            good.append(normalize_wallet(value))
        except InvalidWallet:
            bad.append(value)
    if bad:
        more = f" and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
        raise InvalidWallet("invalid wallet address(es): " + ", ".join(shown(b) for b in bad[:LISTED]) + more
                            + " (expected 0x followed by 40 hex characters)")
    return list(dict.fromkeys(good))


def shard_of(wallet: str, shards: int) -> int:
    """Stable shard index of a wallet (same on every machine and Python run)."""
    if shards <= 1:
        return 0
    return int(wallet[2:10], 16) % shards


def poller_index(wallet: str, pollers: int) -> int:
    """Which poller of a shard owns a wallet (other hex digits than the shard hash)."""
    return int(wallet[10:18], 16) % pollers if pollers > 1 else 0
