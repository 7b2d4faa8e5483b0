"""The operator's view: the Grafana dashboard and the Prometheus alert rules in ``deploy/``.

Both are parsed as Grafana and Prometheus would read them (every query through a PromQL parser), and
every metric they name must be one a real run serves: a sharded hot tier on the stream and a cold tier
on the sweep schedule, scraped over HTTP. ``.ci/run`` also runs ``promtool check rules`` and
``promtool test rules`` (the alerts' own unit tests in ``deploy/prometheus/alerts_test.yml``).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
from pathlib import Path
from typing import Any

import promql_parser
import psycopg
import pytest
import yaml

from polycopy_actors.db import queries
from tests.helpers import (
    Proc,
    cli_env,
    deep_merge,
    fast_timings,
    free_port,
    scrape,
    started_world,
    wait_for,
    write_config,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "polycopy.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

#: What Grafana puts in place of the dashboard's variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": "(a|b)", "$tier": "(hot|cold)"}

#: The issue's panel list, each with the panel title that answers it.
PANELS = {
    "detection lag p50/p95 by source": "Detection lag p50 / p95 by source",
    "stream connected and reconnects": "Stream connected and reconnects",
    "feed lag": "Feed lag and the data API's own lag",
    "requests per second against each tier's budget": "Requests per second against the budget",
    "429s": "429 answers and other failures",
    "reconciles by reason": "Reconciles by reason",
    "closes by reason": "Closes by reason",
    "writer queue and flush time": "Writer queue and flush time",
    "database pool": "Database pool",
    "restarts by actor": "Restarts by actor",
    "wallets per tier": "Wallets per tier",
    "cold sweep progress": "Cold sweep progress",
    "cold sweep duration": "Cold sweep duration",
    "health by process": "Health by process",
}

#: The issue's alert list, each with the rule that answers it.
ALERT_NAMES = {
    "stream down for 2 minutes": "PolycopyStreamDown",
    "feed lag above 60 s": "PolycopyFeedLagging",
    "hot detection p95 above 10 s for 5 minutes": "PolycopyHotDetectionSlow",
    "no successful read for the tier's health window": "PolycopyNoSuccessfulRead",
    "budget above 90 % for 10 minutes": "PolycopyBudgetNearlySpent",
    "restarts": "PolycopyActorRestarting",
    "stream rows unconfirmed after 10 minutes": "PolycopyStreamRowsUnconfirmed",
    "a cold sweep that did not finish within two intervals": "PolycopyColdSweepOverdue",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana sends it) for every target of every panel."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects (parsing raises on a malformed one)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def scrape_when_up(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics, or nothing while the process is still starting its metrics server."""
    try:
        return scrape(port)
    except urllib.error.URLError:
        return {}


def test_the_dashboard_is_a_grafana_model_with_every_panel_asked_for():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["tier"]["type"] == "query" and "polycopy_tier_info" in variables["tier"]["definition"]
    assert "$tier" in variables["instance"]["definition"]  # the processes of the tiers chosen
    titles = [p["title"] for p in dash["panels"] if p["type"] != "row"]
    missing = {topic: title for topic, title in PANELS.items() if title not in titles}
    assert not missing, missing
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    # Grafana lays panels out on a 24-column grid: none overlaps another.
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
    for title, expr in panel_queries():
        assert metric_names(expr), (title, expr)


def test_the_alert_rules_are_the_ones_asked_for_and_parse():
    by_name = {rule["alert"]: rule for rule in rules()}
    missing = {topic: name for topic, name in ALERT_NAMES.items() if name not in by_name}
    assert not missing, missing
    for name, rule in by_name.items():
        assert metric_names(rule["expr"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
    # Thresholds that follow the config are read from what the process serves, not copied.
    assert "polycopy_request_budget_per_second" in by_name["PolycopyBudgetNearlySpent"]["expr"]
    assert "polycopy_health_window_seconds" in by_name["PolycopyNoSuccessfulRead"]["expr"]
    assert "polycopy_cold_sweep_interval_seconds" in by_name["PolycopyColdSweepOverdue"]["expr"]
    assert by_name["PolycopyStreamDown"]["for"] == "2m" and by_name["PolycopyHotDetectionSlow"]["for"] == "5m"


@pytest.mark.timeout(150)
def test_every_metric_the_dashboard_and_the_rules_name_is_served_by_a_real_run(db, tmp_path):
    """A sharded hot tier (stream, feed) and a cold tier sweeping, on one database and simulator:
    together they serve every name the dashboard and the rules use, with the values the rules read."""
    world, sim = started_world(61, 4, 8, 30, stream_delay_seconds=0.2, global_feed_delay_seconds=1)
    hot_wallets, cold_wallets = world.wallets[:3], world.wallets[3:]
    with psycopg.connect(db) as conn, conn.transaction():
        queries.follow(conn, hot_wallets, "test")
        queries.add_traders(conn, cold_wallets)
    hot_port, cold_port = free_port(), free_port()
    hot_cfg = write_config(tmp_path / "hot.yaml", deep_merge(fast_timings(), {
        "processes": 2, "metrics": {"port": hot_port, "host": "127.0.0.1"},
        "stream": {"silence_seconds": 5}}))
    cold_cfg = write_config(tmp_path / "cold.yaml", deep_merge(fast_timings(), {
        "metrics": {"port": cold_port, "host": "127.0.0.1"},
        "tiers": {"cold": {"schedule": "sweep", "sweep_interval_seconds": 3, "jitter_seconds": 0,
                           "lock_ttl_seconds": 5, "wallet_cooldown_seconds": 0.1, "health_window_seconds": 120,
                           "rate_limit": {"requests_per_second": 40, "burst": 4}}}}))
    hot = Proc(["--tier", "hot", "--config", str(hot_cfg)], cli_env(db, sim))
    cold = Proc(["--tier", "cold", "--config", str(cold_cfg)], cli_env(db, sim))
    started = time.time()
    try:
        sim.drive(0.3)
        hot_m = wait_for(lambda: (m := scrape_when_up(hot_port)) and m.get(("polycopy_stream_connected", ())) == 1
                         and sum(v for (n, _), v in m.items() if n == "polycopy_trade_detect_lag_seconds_count") > 0
                         and m, 60, "the sharded hot tier on the stream, trades detected", lambda: hot.log)
        cold_m = wait_for(lambda: (m := scrape_when_up(cold_port))
                          and m.get(("polycopy_cold_sweep_duration_seconds_count", ()), 0) >= 1 and m, 60,
                          "a completed cold sweep", lambda: cold.log)
    finally:
        for proc in (hot, cold):
            proc.popen.send_signal(signal.SIGTERM)
        codes = [hot.wait(30), cold.wait(30)]
        sim.stop()
    assert codes == [0, 0], hot.log + "\n" + cold.log

    served = {name for name, _ in hot_m} | {name for name, _ in cold_m}
    used = {name for _, expr in panel_queries() for name in metric_names(expr)}
    used |= {name for rule in rules() for name in metric_names(rule["expr"])}
    assert not used - served, sorted(used - served)

    # What the rules compare against, as each process serves it.
    assert hot_m[("polycopy_tier_info", (("env", "development"), ("schedule", "continuous"), ("stream", "on"),
                                         ("tier", "hot")))] == 1
    assert hot_m[("polycopy_request_budget_per_second", ())] == 50  # the tier's budget, not a shard's half
    assert hot_m[("polycopy_health_window_seconds", ())] == 30
    assert hot_m[("polycopy_cold_sweep_interval_seconds", ())] == 0
    # The shards' live gauges only: the parent (which runs no actors) adds no 0 line.
    healthy = [labels for (name, labels), _ in hot_m.items() if name == "polycopy_healthy"]
    assert len(healthy) == 2, healthy
    assert cold_m[("polycopy_tier_info", (("env", "development"), ("schedule", "sweep"), ("stream", "off"),
                                          ("tier", "cold")))] == 1
    assert cold_m[("polycopy_cold_sweep_interval_seconds", ())] == 3
    assert cold_m[("polycopy_health_window_seconds", ())] == 120
    assert started <= cold_m[("polycopy_cold_sweep_last_completed_timestamp_seconds", ())] <= time.time()
    swept = cold_m[("polycopy_cold_sweep_wallets", (("state", "polled"),))]
    assert swept == cold_m[("polycopy_cold_sweep_wallets", (("state", "total"),))] == len(cold_wallets)
