"""Gamma's ``/markets``: the state of markets (closed or resolved), asked in small batches.

Answers are cut short at about 24 rows whatever ``limit`` (default 20), and without ``closed`` gamma
behaves as ``closed=false`` and hides resolved markets. Used through
:class:`~polycopy_actors.api.client.PolymarketClient`.
"""

from __future__ import annotations

import logging
from typing import Any

from polycopy_actors.api.models import Market, parse_market
from polycopy_actors.api.transport import Read, Transport, json_list

log = logging.getLogger(__name__)
#: Ask for this many ids at once (under the ~24 rows an answer holds).
GAMMA_IDS_PER_REQUEST = 20


class Gamma:
    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def market_states(self, condition_ids: list[str]) -> dict[str, bool]:
        """Gamma's view of each market: True = closed or resolved, False = open; a market gamma did not
        list is left out (unknown: a close waiting on it is not classified yet).

        In batches of :data:`GAMMA_IDS_PER_REQUEST` with an explicit ``limit`` (answers are cut short
        at about 24 rows), first with ``closed=true`` (without it gamma hides resolved markets), then
        ``closed=false`` for the ids the first answer did not list: at most two requests per batch, so the
        reads are bounded by the ids asked about (rows of ids not asked about are ignored)."""
        out: dict[str, bool] = {}
        ids = sorted(set(condition_ids))
        for i in range(0, len(ids), GAMMA_IDS_PER_REQUEST):
            chunk = ids[i:i + GAMMA_IDS_PER_REQUEST]
            for closed in (True, False):
                ask = [c for c in chunk if c not in out]
                if not ask:
                    break
                params: list[tuple[str, Any]] = [("condition_ids", c) for c in ask]
                params += [("closed", "true" if closed else "false"), ("limit", len(ask))]
                got: Read[Market] = Read()
                self.t.parse_rows(json_list(self.t.get_fresh(self.t.api.gamma_api_url, "/markets", params, "markets")),
                                 parse_market, "markets", "-", got)
                for market in got.items:
                    if market.condition_id in ask:
                        out[market.condition_id] = market.is_closed
        missing = len(ids) - len(out)
        if missing:
            log.warning("gamma did not list %d of %d markets asked about; their closes wait", missing, len(ids))
        return out
