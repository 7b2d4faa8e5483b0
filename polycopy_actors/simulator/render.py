"""How the simulator renders its world: v1 rows (camelCase), v2 rows (snake_case) and gamma rows
(JSON-encoded string fields), field for field as ``polymarket-api.md`` and the real samples show them."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from polycopy_actors.simulator.world import ExpectedClose, SimActivity, SimFill, SimMarket, SimPosition


def num(value: Decimal) -> float:
    """Amounts go out as JSON numbers (the API computes them as floats)."""
    return float(value)


def v1_fill(f: SimFill) -> dict[str, Any]:
    m = f.market
    return {
        "proxyWallet": f.wallet, "side": f.side, "asset": f.asset, "conditionId": m.condition_id,
        "size": num(f.size), "price": num(f.price), "timestamp": f.timestamp, "title": m.question,
        "slug": m.slug, "icon": "", "eventSlug": m.slug, "outcome": m.outcomes[f.outcome_index],
        "outcomeIndex": f.outcome_index, "name": "", "pseudonym": "", "bio": "", "profileImage": "",
        "profileImageOptimized": "", "transactionHash": f.tx,
    }



def v1_activity_row(row: Any) -> dict[str, Any]:
    if isinstance(row, SimFill):
        out = v1_fill(row)
        out["type"] = "TRADE"
        out["usdcSize"] = num(row.size * row.price)
        return out
    a: SimActivity = row
    return {
        "proxyWallet": a.wallet, "timestamp": a.timestamp, "conditionId": a.market.condition_id,
        "type": a.type, "size": num(a.size), "usdcSize": num(a.size), "transactionHash": a.tx, "price": 0,
        "asset": "", "side": "", "outcomeIndex": 999, "title": a.market.question, "slug": a.market.slug,
        "icon": "", "eventSlug": a.market.slug, "outcome": "", "name": "", "pseudonym": "", "bio": "",
        "profileImage": "", "profileImageOptimized": "",
    }



def v2_fill(f: SimFill) -> dict[str, Any]:
    m = f.market
    return {
        "proxy_wallet": f.wallet, "side": f.side, "token_id": f.asset, "condition_id": m.condition_id,
        "size": num(f.size), "price": num(f.price), "timestamp": f.timestamp, "title": m.question,
        "slug": m.slug, "icon": "", "event_slug": m.slug, "outcome": m.outcomes[f.outcome_index],
        "outcome_index": f.outcome_index, "name": "", "pseudonym": "", "bio": "", "profile_image": "",
        "profile_image_optimized": "", "transaction_hash": f.tx,
    }



def v2_activity_row(row: Any) -> dict[str, Any]:
    if isinstance(row, SimFill):
        out = v2_fill(row)
        out["type"] = "TRADE"
        out["usdc_size"] = num(row.size * row.price)
        return out
    a: SimActivity = row
    return {
        "proxy_wallet": a.wallet, "timestamp": a.timestamp, "condition_id": a.market.condition_id,
        "type": a.type, "size": num(a.size), "usdc_size": num(a.size), "transaction_hash": a.tx, "price": 0,
        "token_id": "", "side": "", "outcome_index": 999, "title": a.market.question, "slug": a.market.slug,
        "icon": "", "event_slug": a.market.slug, "outcome": "", "name": "", "pseudonym": "", "bio": "",
        "profile_image": "", "profile_image_optimized": "",
    }



def gamma_row(m: SimMarket) -> dict[str, Any]:
    prices = [str(m.price(0)), str(m.price(1))]
    return {
        "id": str(m.market_id), "question": m.question, "conditionId": m.condition_id, "slug": m.slug,
        "endDate": "2027-01-01T00:00:00Z", "active": True, "closed": m.closed, "archived": m.archived,
        "acceptingOrders": not m.closed, "umaResolutionStatus": "resolved" if m.winner is not None else None,
        "closedTime": (time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(m.closed_time))
                       if m.closed_time else None),
        "outcomes": json.dumps(list(m.outcomes)), "outcomePrices": json.dumps(prices),
        "clobTokenIds": json.dumps(list(m.assets)),
    }


def v1_position(p: SimPosition) -> dict[str, Any]:
    m = p.market
    cur = m.price(p.outcome_index)
    return {
        "proxyWallet": p.wallet, "asset": m.assets[p.outcome_index], "conditionId": m.condition_id,
        "size": num(p.size), "avgPrice": num(p.avg_price), "initialValue": num(p.size * p.avg_price),
        "currentValue": num(p.size * cur), "cashPnl": num(p.size * (cur - p.avg_price)), "percentPnl": 0,
        "totalBought": num(p.total_bought), "realizedPnl": 0, "percentRealizedPnl": 0, "curPrice": num(cur),
        "redeemable": m.winner is not None, "mergeable": False, "title": m.question, "slug": m.slug,
        "icon": "", "eventSlug": m.slug, "outcome": m.outcomes[p.outcome_index],
        "outcomeIndex": p.outcome_index, "oppositeOutcome": m.outcomes[1 - p.outcome_index],
        "oppositeAsset": m.assets[1 - p.outcome_index], "endDate": "2027-01-01", "negativeRisk": False,
    }


def v2_position(p: SimPosition) -> dict[str, Any]:
    m = p.market
    cur = m.price(p.outcome_index)
    status_row = "OPEN" if m.winner is None else ("REDEEMABLE" if cur > 0 else "REDEEMABLE_LOST")
    return {
        "proxy_wallet": p.wallet, "condition_id": m.condition_id, "token_id": m.assets[p.outcome_index],
        "outcome": m.outcomes[p.outcome_index], "outcome_index": p.outcome_index, "title": m.question,
        "status": status_row, "current_size": num(p.size), "avg_price": num(p.avg_price),
        "entry_cost_usdc": num(p.size * p.avg_price), "current_value": num(p.size * cur),
        "realized_pnl": 0.0, "unrealized_pnl": num(p.size * (cur - p.avg_price)),
        "total_size": num(p.total_bought), "redeemable": m.winner is not None, "mergeable": False,
        "last_event_at": p.last_event_at, "first_entry_at": p.opened_at,
    }


def v1_closed_position(c: ExpectedClose, m: SimMarket) -> dict[str, Any]:
    return {
        "proxyWallet": c.wallet, "asset": c.asset, "conditionId": c.condition_id, "avgPrice": num(c.avg_price),
        "totalBought": num(c.total_bought), "realizedPnl": 0.0, "curPrice": num(m.price(c.outcome_index)),
        "title": m.question, "slug": m.slug, "icon": "", "eventSlug": m.slug,
        "outcome": m.outcomes[c.outcome_index], "outcomeIndex": c.outcome_index,
        "oppositeOutcome": m.outcomes[1 - c.outcome_index], "oppositeAsset": m.assets[1 - c.outcome_index],
        "endDate": "2026-12-31T00:00:00Z", "timestamp": c.closed_at,
    }


def v2_closed_position(c: ExpectedClose, m: SimMarket) -> dict[str, Any]:
    return {
        "proxy_wallet": c.wallet, "condition_id": c.condition_id, "token_id": c.asset,
        "outcome": m.outcomes[c.outcome_index], "outcome_index": c.outcome_index, "title": m.question,
        "status": "CLOSED", "current_size": 0.0, "avg_price": num(c.avg_price),
        "entry_cost_usdc": num(c.total_bought * c.avg_price), "current_value": 0.0, "realized_pnl": 0.0,
        "unrealized_pnl": 0.0, "redeemable": False, "mergeable": False, "last_event_at": c.closed_at,
    }
