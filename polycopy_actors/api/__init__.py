"""Polymarket's read APIs: the transport (retries, rate limiting, cache-proof answers), the data API v2
and its v1 fallback behind one interface chosen once, gamma, the records they parse, and wallet
addresses."""

from polycopy_actors._exports import lazy

__all__, __getattr__ = lazy(__name__, {
    "client": ["PolymarketClient"],
    "data": ["DataApi"],
    "transport": ["ApiError", "Read", "Rejected", "StaleAnswer", "Stopped", "Transport"],
    "models": ["Activity", "ClosedPosition", "MalformedItem", "Market", "Position", "RawFill", "Trade",
               "assign_trade_ids", "parse_activity", "parse_closed_position", "parse_fill", "parse_market",
               "parse_position"],
    "wallets": ["InvalidWallet", "normalize_wallet", "normalize_wallets", "shard_of"],
})
