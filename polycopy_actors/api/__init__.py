"""Polymarket's read APIs: the HTTP client (transport with retries, rate limiting and cache-proof
URLs; data API v2 and v1; gamma), the records it parses, and wallet addresses."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {
    "client": ["ApiError", "PolymarketClient", "Read", "Rejected", "StaleAnswer", "Stopped"],
    "models": ["("],
    "wallets": ["InvalidWallet", "normalize_wallet", "normalize_wallets", "shard_of"],
})
