"""The simulator's scripted, seedable world: markets, traders, trades, positions, activity.

Thread-safe: every public method takes ``self.lock`` (the HTTP threads read while a driver thread
or a test writes). Ground truth (:meth:`World.truth`) is what a correct tracker must end up with.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

D6 = Decimal("0.000001")
D2 = Decimal("0.01")


def _hex(rng: random.Random, n: int) -> str:
    return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(n))


@dataclass
class SimMarket:
    condition_id: str
    market_id: int
    question: str
    slug: str
    assets: tuple[str, str]
    outcomes: tuple[str, str]
    price_yes: Decimal
    closed: bool = False
    archived: bool = False
    winner: int | None = None
    closed_time: int | None = None

    def price(self, index: int) -> Decimal:
        if self.winner is not None:
            return Decimal(1) if index == self.winner else Decimal(0)
        return self.price_yes if index == 0 else (Decimal(1) - self.price_yes)


@dataclass
class SimFill:
    seq: int
    wallet: str
    market: SimMarket
    outcome_index: int
    side: str
    size: Decimal
    price: Decimal
    timestamp: int
    tx: str
    taker: bool
    #: Wall time of the match: every route shows the fill a route-specific delay after it.
    matched_at: float = 0.0

    @property
    def asset(self) -> str:
        return self.market.assets[self.outcome_index]


@dataclass
class SimActivity:
    seq: int
    wallet: str
    type: str
    market: SimMarket
    timestamp: int
    tx: str
    size: Decimal


@dataclass
class SimPosition:
    wallet: str
    market: SimMarket
    outcome_index: int
    size: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    total_bought: Decimal = Decimal(0)
    opened_at: int = 0
    last_event_at: int = 0


@dataclass
class ExpectedClose:
    wallet: str
    asset: str
    condition_id: str
    reason: str
    opened_at: int
    closed_at: int
    #: Order among fills and other events (the world's sequence).
    seq: int = 0
    #: What the position held when it closed (for /closed-positions and /v2/positions?status=CLOSED).
    avg_price: Decimal = Decimal(0)
    total_bought: Decimal = Decimal(0)
    outcome_index: int = 0


class World:
    """See the module docstring."""

    def __init__(self, seed: int = 1, markets: int = 8, wallets: int = 10) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.seq = 0
        self.markets: dict[str, SimMarket] = {}
        self.fills: list[SimFill] = []
        #: The same fills per wallet (the per-wallet routes read these).
        self.fills_by_wallet: dict[str, list[SimFill]] = {}
        self.activity: list[SimActivity] = []
        self.positions: dict[tuple[str, str], SimPosition] = {}
        self.closes: list[ExpectedClose] = []
        #: (wall time, key, the position after the change or None): what a lagging positions route shows.
        self.position_log: list[tuple[float, tuple[str, str], SimPosition | None]] = []
        self.wallets: list[str] = [_hex(self.rng, 40) for _ in range(wallets)]
        for _ in range(markets):
            self.add_market()

    # --- building the world ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _logged(self, key: tuple[str, str]) -> None:
        pos = self.positions.get(key)
        self.position_log.append((time.time(), key, replace(pos) if pos is not None else None))

    def positions_as_of(self, when: float) -> list[SimPosition]:
        """The positions as they stood at wall time ``when`` (a positions route that runs late)."""
        with self.lock:
            state: dict[tuple[str, str], SimPosition | None] = {}
            for t, key, pos in self.position_log:
                if t > when:
                    break
                state[key] = pos
            return [p for p in state.values() if p is not None]

    def _close(self, close: ExpectedClose, pos: SimPosition | None = None) -> None:
        close.seq = self._next_seq()
        if pos is not None:
            close.avg_price, close.total_bought = pos.avg_price, pos.total_bought
            close.outcome_index = pos.outcome_index
        self.closes.append(close)

    def add_market(self) -> SimMarket:
        with self.lock:
            n = len(self.markets) + 1
            cid = _hex(self.rng, 64)
            assets = (str(self.rng.getrandbits(250)), str(self.rng.getrandbits(250)))
            market = SimMarket(
                condition_id=cid, market_id=500000 + n, question=f"Simulated market {n}?",
                slug=f"simulated-market-{n}", assets=assets, outcomes=("Yes", "No"),
                price_yes=Decimal(self.rng.randint(5, 95)) / 100,
            )
            self.markets[cid] = market
            return market

    def add_wallet(self) -> str:
        with self.lock:
            wallet = _hex(self.rng, 40)
            self.wallets.append(wallet)
            return wallet

    def open_markets(self) -> list[SimMarket]:
        return [m for m in self.markets.values() if not m.closed]

    def _now(self, ts: int | None) -> int:
        return int(time.time()) if ts is None else ts

    def trade(self, wallet: str, market: SimMarket, outcome_index: int, side: str, size: Decimal | float | str,
              price: Decimal | float | str | None = None, ts: int | None = None, tx: str | None = None,
              taker: bool = True) -> SimFill:
        """One fill. A SELL larger than the position is cut to the position."""
        with self.lock:
            if market.closed:
                raise ValueError("market is closed")
            ts = self._now(ts)
            size = Decimal(str(size)).quantize(D6)
            price = market.price(outcome_index) if price is None else Decimal(str(price))
            key = (wallet, market.assets[outcome_index])
            pos = self.positions.get(key)
            if side == "SELL":
                if pos is None or pos.size <= 0:
                    raise ValueError("nothing to sell")
                size = min(size, pos.size)
            fill = SimFill(self._next_seq(), wallet, market, outcome_index, side, size, price, ts,
                           tx or _hex(self.rng, 64), taker, matched_at=time.time())
            self.fills.append(fill)
            self.fills_by_wallet.setdefault(wallet, []).append(fill)
            if side == "BUY":
                if pos is None:
                    pos = SimPosition(wallet, market, outcome_index, opened_at=ts)
                    self.positions[key] = pos
                cost = pos.avg_price * pos.size + price * size
                pos.size += size
                pos.total_bought += size
                pos.avg_price = (cost / pos.size).quantize(D6, rounding=ROUND_HALF_EVEN)
                pos.last_event_at = ts
            else:
                assert pos is not None
                pos.size -= size
                pos.last_event_at = ts
                if pos.size <= 0:
                    del self.positions[key]
                    self._close(ExpectedClose(wallet, key[1], market.condition_id, "manual_close",
                                                     pos.opened_at, ts), pos)
            self._logged(key)
            return fill

    def replace_fill(self, old: SimFill, new: SimFill) -> None:
        """The API reports a fill differently from now on (a corrected price, say)."""
        with self.lock:
            self.fills[self.fills.index(old)] = new
            mine = self.fills_by_wallet[old.wallet]
            mine[mine.index(old)] = new

    def multi_fill(self, wallet: str, fills: list[tuple[SimMarket, int, str, Any, Any]], ts: int | None = None,
                   ) -> list[SimFill]:
        """Several fills in one transaction (same hash, same second)."""
        with self.lock:
            ts = self._now(ts)
            tx = _hex(self.rng, 64)
            return [self.trade(wallet, m, i, side, size, price, ts=ts, tx=tx) for m, i, side, size, price in fills]

    def resolve(self, market: SimMarket, winner: int, ts: int | None = None) -> None:
        """The market closes and resolves; positions stay listed, redeemable, until redeemed."""
        with self.lock:
            market.closed = True
            market.winner = winner
            market.closed_time = self._now(ts)

    def redeem(self, wallet: str, market: SimMarket, ts: int | None = None, tx: str | None = None) -> list[str]:
        """REDEEM of a resolved market: the wallet's positions in it disappear."""
        with self.lock:
            if market.winner is None:
                raise ValueError("market not resolved")
            ts = self._now(ts)
            tx = tx or _hex(self.rng, 64)
            gone = []
            payout = Decimal(0)
            for index in (0, 1):
                key = (wallet, market.assets[index])
                pos = self.positions.pop(key, None)
                if pos is None:
                    continue
                gone.append(key[1])
                payout += pos.size if index == market.winner else Decimal(0)
                self._close(ExpectedClose(wallet, key[1], market.condition_id, "redeemed", pos.opened_at, ts), pos)
                self._logged(key)
            self.activity.append(SimActivity(self._next_seq(), wallet, "REDEEM", market, ts, tx, payout))
            return gone

    def auto_redeem(self, market: SimMarket, ts: int | None = None) -> list[str]:
        """Automatic redemption ("Get Paid Instantly"): every holder of a resolved market redeemed in one
        transaction, one REDEEM row each (size 0 for a losing side). Returns the wallets redeemed."""
        with self.lock:
            tx = _hex(self.rng, 64)
            holders = sorted({p.wallet for p in self.positions.values() if p.market is market})
            for wallet in holders:
                self.redeem(wallet, market, ts, tx)
            return holders

    def merge(self, wallet: str, market: SimMarket, ts: int | None = None) -> list[str]:
        """The wallet's positions in an open market disappear without a trade (MERGE)."""
        with self.lock:
            ts = self._now(ts)
            gone = []
            for index in (0, 1):
                key = (wallet, market.assets[index])
                pos = self.positions.pop(key, None)
                if pos is not None:
                    gone.append(key[1])
                    self._close(ExpectedClose(wallet, key[1], market.condition_id,
                                                     "market_closed" if market.closed else "manual_close",
                                                     pos.opened_at, ts), pos)
                    self._logged(key)
            self.activity.append(SimActivity(self._next_seq(), wallet, "MERGE", market, ts, _hex(self.rng, 64),
                                             Decimal(0)))
            return gone

    def archive(self, market: SimMarket, ts: int | None = None) -> None:
        """A closed market is archived: its unredeemed positions vanish from listings (no REDEEM)."""
        with self.lock:
            if not market.closed:
                raise ValueError("market is open")
            ts = self._now(ts)
            market.archived = True
            for key in [k for k, p in self.positions.items() if p.market is market]:
                pos = self.positions.pop(key)
                self._close(ExpectedClose(key[0], key[1], market.condition_id, "market_closed",
                                                 pos.opened_at, ts), pos)
                self._logged(key)

    def backlog(self, wallet: str, count: int, end_ts: int | None = None, per_second: int = 3) -> None:
        """``count`` past fills of one wallet (several per second), ending at ``end_ts``."""
        with self.lock:
            end_ts = self._now(end_ts) - 1
            market = self.open_markets()[0]
            for i in range(count):
                ts = end_ts - (count - i) // per_second
                side = "BUY" if i % 4 != 3 else "SELL"
                self.trade(wallet, market, i % 2 if side == "BUY" else (i - 1) % 2, side,
                           Decimal(self.rng.randint(1, 20)), ts=ts, taker=i % 3 != 0)

    def background(self, wallets: list[str], fills: int) -> None:
        """``fills`` random fills of other traders (the platform's flow a global stream or feed carries):
        buys, and sales of what they hold."""
        with self.lock:
            rng = self.rng
            open_markets = self.open_markets() or [self.add_market()]
            for _ in range(fills):
                wallet = rng.choice(wallets)
                market = rng.choice(open_markets)
                index = rng.randint(0, 1)
                pos = self.positions.get((wallet, market.assets[index]))
                if pos is not None and pos.size > 0 and rng.random() < 0.4:
                    self.trade(wallet, market, index, "SELL", (pos.size / 2).quantize(D2) or pos.size)
                else:
                    self.trade(wallet, market, index, "BUY", rng.randint(1, 100), taker=rng.random() < 0.5)

    def step(self) -> None:
        """One random event (the demo and busy-world tests drive the world with this)."""
        with self.lock:
            rng = self.rng
            roll = rng.random()
            wallet = rng.choice(self.wallets)
            held = [p for p in self.positions.values() if p.wallet == wallet]
            open_markets = self.open_markets()
            if len(open_markets) < 3:
                open_markets = [self.add_market()] + open_markets
            if roll < 0.55 or not held:
                market = rng.choice(open_markets)
                market.price_yes = min(Decimal("0.97"), max(Decimal("0.03"),
                                                            market.price_yes + Decimal(rng.randint(-3, 3)) / 100))
                if rng.random() < 0.15:
                    self.multi_fill(wallet, [(market, 0, "BUY", rng.randint(1, 50), None),
                                             (market, 1, "BUY", rng.randint(1, 50), None)])
                else:
                    self.trade(wallet, market, rng.randint(0, 1), "BUY", rng.randint(1, 200), taker=rng.random() < 0.7)
                return
            pos = rng.choice(held)
            if roll < 0.80 and not pos.market.closed:
                part = pos.size if rng.random() < 0.4 else (pos.size / 2).quantize(D2)
                if part > 0:
                    self.trade(wallet, pos.market, pos.outcome_index, "SELL", part)
            elif roll < 0.86 and not pos.market.closed:
                self.resolve(pos.market, rng.randint(0, 1))
            elif roll < 0.93 and pos.market.winner is not None:
                self.redeem(wallet, pos.market)
            elif roll < 0.96 and not pos.market.closed:
                self.merge(wallet, pos.market)
            elif pos.market.closed and not pos.market.archived:
                self.archive(pos.market)

    # --- views ------------------------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """Every fill, current positions and expected closes (JSON-friendly)."""
        with self.lock:
            return {
                "fills": [
                    {"wallet": f.wallet, "transaction_hash": f.tx, "asset": f.asset, "side": f.side,
                     "size": str(f.size), "price": str(f.price), "timestamp": f.timestamp,
                     "condition_id": f.market.condition_id}
                    for f in self.fills
                ],
                "positions": [
                    {"wallet": p.wallet, "asset": p.market.assets[p.outcome_index],
                     "condition_id": p.market.condition_id, "size": str(p.size), "avg_price": str(p.avg_price)}
                    for p in self.positions.values() if not p.market.archived
                ],
                "closes": [c.__dict__ for c in self.closes],
            }

