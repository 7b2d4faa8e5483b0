"""What each version of the data API answers: :class:`DataApi`, implemented by
:class:`~polycopy_actors.api.data_v2.DataApiV2` and :class:`~polycopy_actors.api.data_v1.DataApiV1`
(rows of other wallets are left to the caller to drop)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from polycopy_actors.api.models import Activity, ClosedPosition, Position, RawFill
from polycopy_actors.api.transport import Read, Transport


class DataApi(ABC):
    """One data-API version over a :class:`Transport` (owned by the client that made it)."""

    version: str

    def __init__(self, transport: Transport) -> None:
        self.t = transport

    @abstractmethod
    def fills(self, wallet: str, start: int) -> Read[RawFill]:
        """Every fill of the wallet since ``start`` (epoch seconds, inclusive), maker and taker."""

    @abstractmethod
    def positions(self, wallet: str) -> Read[Position]:
        """The wallet's current positions, every page, none hidden by a size floor."""

    @abstractmethod
    def closing_activity(self, wallet: str, since: int) -> Read[Activity]:
        """The wallet's REDEEM and MERGE activity since ``since``."""

    @abstractmethod
    def closed_positions(self, wallet: str, limit: int) -> Read[ClosedPosition]:
        """The API's own latest closed positions of the wallet."""

    @abstractmethod
    def market_fills(self, chunk: str, max_rows: int) -> Read[RawFill]:
        """The latest fills of up to 20 markets (comma-separated condition ids)."""

    @abstractmethod
    def api_lag(self) -> float:
        """The API's own serving lag in seconds."""
