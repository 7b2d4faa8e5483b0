"""The data API v1 (a fallback; its routes may be retired): bare JSON arrays, camelCase rows,
``limit``/``offset`` paging with documented caps.

``/trades`` is read as one page of its maximum size, never by offset (offset paging while fills arrive
shifts rows across pages and would give one fill two ids); deeper history continues through
``/activity`` windows whose ``end`` lies in the past. Used through
:class:`~polycopy_actors.api.client.PolymarketClient`.
"""

from __future__ import annotations

from polycopy_actors.api import models
from polycopy_actors.api.data import DataApi
from polycopy_actors.api.transport import ApiError, Read, json_list

# Documented caps (../shared/polymarket-api.md).
V1_TRADES_LIMIT_MAX = 10_000
V1_ACTIVITY_LIMIT_MAX = 500
V1_ACTIVITY_OFFSET_MAX = 5_000
V1_POSITIONS_LIMIT_MAX = 500
V1_POSITIONS_OFFSET_MAX = 10_000


class DataApiV1(DataApi):
    """Data API v1 reads (see :class:`~polycopy_actors.api.data.DataApi`)."""

    version = "v1"

    def fills(self, wallet: str, start: int) -> Read[models.RawFill]:
        """v1 is a fallback: one ``/trades`` page of its maximum size, newest first (offset paging while
        fills arrive shifts rows across page boundaries and would give one fill two ids); a wallet with
        more fills since ``start`` continues through ``/activity`` windows, whose fixed ``end`` lies in the
        past, so new fills never shift them."""
        out: Read[models.RawFill] = Read()
        body = json_list(self.t.get_fresh(self.t.api.data_api_url, "/trades",
                                        {"user": wallet, "limit": V1_TRADES_LIMIT_MAX, "offset": 0,
                                         "takerOnly": "false"}, "trades"))
        self.t.parse_rows(body, models.parse_fill, "trades", wallet, out)
        if len(body) < V1_TRADES_LIMIT_MAX or not out.items or min(f.timestamp for f in out.items) < start:
            out.items = [f for f in out.items if f.timestamp >= start]
            return out
        # Deeper than one page: the oldest second of the page is read again, whole, by the windows.
        oldest = min(f.timestamp for f in out.items)
        out.items = [f for f in out.items if f.timestamp != oldest]
        deeper = self._activity_fill_windows(wallet, start, oldest)
        out.items += deeper.items
        out.rejected += deeper.rejected
        return out

    def _activity_fill_windows(self, wallet: str, start: int, end: int) -> Read[models.RawFill]:
        """Fills with start <= ts <= end through v1 /activity, window by window (offset cap 5,000).

        With a server that keeps to ``end``, every window ends at least a second earlier than the one
        before; whatever the server does, the walk is bounded like a v2 walk: past ``api.max_walk_pages``
        pages or ``api.max_walk_rows`` rows it fails ``incomplete`` (the rows read are dropped: memory
        stays bounded), and full pages without one readable row fail ``malformed``."""
        api = self.t.api
        limit = min(api.page_size, V1_ACTIVITY_LIMIT_MAX)
        out: Read[models.RawFill] = Read()
        pages = rows = 0
        while True:
            window: Read[models.RawFill] = Read()
            offset = 0
            exhausted = False
            while offset <= V1_ACTIVITY_OFFSET_MAX:
                if pages >= api.max_walk_pages:
                    raise ApiError("incomplete", f"wallet {wallet}: /activity fills need more than "
                                                 f"{api.max_walk_pages} pages (raise api.max_walk_pages)")
                body = json_list(self.t.get_fresh(
                    api.data_api_url, "/activity",
                    {"user": wallet, "type": "TRADE", "start": start, "end": end, "limit": limit, "offset": offset},
                    "activity",
                ))
                pages += 1
                rows += len(body)
                if rows > api.max_walk_rows:
                    raise ApiError("incomplete", f"wallet {wallet}: /activity fills are more than "
                                                 f"{api.max_walk_rows} rows (raise api.max_walk_rows)")
                self.t.parse_rows(body, models.parse_fill, "activity", wallet, window)
                if len(body) < limit:
                    exhausted = True
                    break
                offset += limit
            out.rejected += window.rejected
            if exhausted:
                out.items += window.items
                return out
            if not window.items:  # full pages and not one readable row: no oldest second to go on from
                raise ApiError("malformed", f"wallet {wallet}: /activity served full pages of unreadable rows")
            oldest = min(f.timestamp for f in window.items)
            if oldest == end:
                raise ApiError("incomplete", f"wallet {wallet}: more than {V1_ACTIVITY_OFFSET_MAX} fills in one second")
            out.items += [f for f in window.items if f.timestamp != oldest]
            end = oldest  # the next window re-reads that whole second

    def positions(self, wallet: str) -> Read[models.Position]:
        out: Read[models.Position] = Read()
        offset = 0
        while True:
            if offset > V1_POSITIONS_OFFSET_MAX:
                raise ApiError("incomplete", f"wallet {wallet}: more positions than /positions can list")
            body = json_list(self.t.get_fresh(
                self.t.api.data_api_url, "/positions",
                {"user": wallet, "sizeThreshold": 0, "limit": V1_POSITIONS_LIMIT_MAX, "offset": offset},
                "positions",
            ))
            self.t.parse_rows(body, models.parse_position, "positions", wallet, out)
            if len(body) < V1_POSITIONS_LIMIT_MAX:
                return out
            offset += V1_POSITIONS_LIMIT_MAX

    def closing_activity(self, wallet: str, since: int) -> Read[models.Activity]:
        out: Read[models.Activity] = Read()
        offset = 0
        while offset <= V1_ACTIVITY_OFFSET_MAX:
            body = json_list(self.t.get_fresh(
                self.t.api.data_api_url, "/activity",
                {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since), "limit": V1_ACTIVITY_LIMIT_MAX,
                 "offset": offset}, "activity",
            ))
            self.t.parse_rows(body, models.parse_activity, "activity", wallet, out)
            if len(body) < V1_ACTIVITY_LIMIT_MAX:
                break
            offset += V1_ACTIVITY_LIMIT_MAX
        return out

    def closed_positions(self, wallet: str, limit: int) -> Read[models.ClosedPosition]:
        out: Read[models.ClosedPosition] = Read()
        rows = json_list(self.t.get_fresh(self.t.api.data_api_url, "/closed-positions",
                                          {"user": wallet, "limit": min(limit, 50)}, "closed_positions"))
        self.t.parse_rows(rows, models.parse_closed_position, "closed_positions", wallet, out)
        return out

    def market_fills(self, chunk: str, max_rows: int) -> Read[models.RawFill]:
        out: Read[models.RawFill] = Read()
        rows = json_list(self.t.get_fresh(self.t.api.data_api_url, "/trades",
                                          {"market": chunk, "limit": min(max_rows, V1_TRADES_LIMIT_MAX),
                                           "takerOnly": "false"}, "trades"))
        self.t.parse_rows(rows, models.parse_fill, "trades", "-", out)
        return out

    def api_lag(self) -> float:
        raise ApiError("client", "the data API v1 has no /v2/status")
