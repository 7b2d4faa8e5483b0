"""/metrics and /healthz of a running tier, scraped over HTTP and parsed with prometheus_client."""

from __future__ import annotations

import re
import signal
import time

import psycopg
import pytest

from polycopy_actors.simulator import Faults
from tests.helpers import (
    Proc,
    cli_env,
    db_trades,
    follow,
    free_port,
    healthz,
    scrape,
    started_world,
    truth_trades,
    wait_for,
    write_config,
)

#: DESIGN.md §3: the metric names users' dashboards rely on.
CONTRACT = [
    "polycopy_api_requests_total", "polycopy_api_request_duration_seconds", "polycopy_wallet_polls_total",
    "polycopy_trades_upserted_total", "polycopy_position_changes_total", "polycopy_positions_closed_total",
    "polycopy_trade_ingest_lag_seconds", "polycopy_db_flushes_total", "polycopy_db_flush_duration_seconds",
    "polycopy_actor_restarts_total", "polycopy_wallets", "polycopy_rate_limiter_wait_seconds",
    "polycopy_cold_sweep_duration_seconds",
]


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.timeout(120)
def test_counters_follow_the_work_and_health_follows_the_api(db, tmp_path):
    world, sim = started_world(41, 5, 6, 40)
    followed = world.wallets[:4]
    follow(db, followed)
    port = free_port()
    cfg = write_config(tmp_path / "m.yaml", {
        "metrics": {"port": port, "host": "127.0.0.1"},
        "logging": {"summary_interval_seconds": 0}, "writer": {"flush_interval_seconds": 0.1},
        "api": {"max_retries": 0, "backoff_base_seconds": 0.05},
        "tiers": {"hot": {"poll_interval_seconds": {"min": 0.2, "max": 0.3}, "wallet_cooldown_seconds": 0.2,
                          "refresh_interval_seconds": 0.5, "health_window_seconds": 2}},
    })
    run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))
    try:
        wait_for(lambda: db_trades(db) == truth_trades(world, followed), 30, "every trade landed")
        with psycopg.connect(db) as conn:
            rows = conn.execute("SELECT count(*) FROM trades_public").fetchone()[0]
        m = wait_for(lambda: (s := scrape(port)) and metric(s, "polycopy_trades_upserted_total", tier="hot") == rows
                     and metric(s, "polycopy_wallet_polls_total", tier="hot", result="ok") >= len(followed)
                     and s, 10, "the trade counter to reach the table's row count, every wallet read")
        text_names = {name for name, _ in m}
        for name in CONTRACT:
            assert any(n == name or n.startswith(name + "_") for n in text_names), name
        assert metric(m, "polycopy_wallets", tier="hot") == len(followed)
        assert metric(m, "polycopy_api_lag_seconds") == 1.0  # the simulator's /v2/status serving lag
        ok_polls = metric(m, "polycopy_wallet_polls_total", tier="hot", result="ok")
        assert ok_polls >= len(followed)
        assert metric(m, "polycopy_api_requests_total", endpoint="positions", status="200") >= ok_polls
        assert metric(m, "polycopy_trade_ingest_lag_seconds_count") == rows  # each trade measured once
        assert metric(m, "polycopy_db_flushes_total", result="ok") >= 1
        assert time.time() - metric(m, "polycopy_last_successful_poll_timestamp_seconds", tier="hot") < 10
        assert not any(re.fullmatch(r"0x[0-9a-f]{40}", v) for _, labels in m for _, v in labels)
        status, body = healthz(port)
        assert status == 200 and body["status"] == "ok" and body["reason"] == "ok"
        # No trading here, so the stream carries nothing: the feed leads (the stream's own test: test_stream_feed).
        assert body["paths"]["feed"] == "ok" and body["paths"]["detection"] in ("feed", "stream+feed")

        sim.set_faults(Faults(error_rate=1.0))  # the API fails for longer than the 2 s window
        status, body = wait_for(lambda: (h := healthz(port))[0] == 503 and h, 15, "/healthz to turn 503")
        assert "no trades read succeeded" in body["reason"]
        # The alert rule's view (PolycopyNoSuccessfulRead): the last read is older than the served window.
        m = scrape(port)
        assert metric(m, "polycopy_health_window_seconds") == 2
        assert time.time() - metric(m, "polycopy_last_successful_poll_timestamp_seconds", tier="hot") > 2
        assert run.popen.poll() is None  # unhealthy, not dead: the platform decides
        sim.set_faults(Faults())
        wait_for(lambda: healthz(port)[0] == 200, 15, "/healthz back to 200")
        # The outage is counted (the feed's failed walks: wallets are read on demand while it is healthy).
        failed = sum(v for (name, labels), v in scrape(port).items()
                     if name == "polycopy_api_requests_total" and dict(labels).get("status", "").startswith("5"))
        assert failed >= 1
    finally:
        run.popen.send_signal(signal.SIGTERM)
        code = run.wait(20)
        sim.stop()
    assert code == 0, run.log
    assert re.search(r"stopped after \d+ s: [\d,]+ polls, [\d,]+ trades, \d+ closes, [\d,]+ errors", run.log)
