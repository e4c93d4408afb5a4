"""deploy/observability: the alerting rules, checked and unit-tested with promtool, and the
Grafana dashboard; both read only metrics that a running orderflow exports.

promtool comes from Debian's `prometheus` package (.ci/run installs it): without it these
tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.manifests import DEPLOY, tool
from tests.deploy.promql import SCRAPER_SERIES, exported_names, metric_names
from tests.system import one_process, start_ready

OBSERVABILITY = DEPLOY / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


# -- the rules and their unit tests ----------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", ALERT_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_each_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for rule in rules():
        mine = [c for c in checks if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never shown quiet"


@pytest.mark.parametrize("alert", [rule["alert"] for rule in rules()])
def test_the_unit_tests_fail_when_an_alert_cannot_fire(alert: str, tmp_path: Path) -> None:
    """Each alert's unit tests depend on its rule: with an expression that never fires in
    its place, promtool reports that alert's tests failed."""
    loaded = yaml.safe_load(ALERTS.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(loaded))
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


# -- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_has_a_panel_for_each_signal() -> None:
    board = json.loads(DASHBOARD.read_text())  # valid JSON
    assert board["uid"] and board["title"] == "orderflow"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    reads = {
        p["title"]: set().union(*(metric_names(t["expr"]) for t in p["targets"])) for p in panels
    }

    def shown(*metrics: str) -> bool:
        return any(set(metrics) <= names for names in reads.values())

    assert shown("orderflow_saga_outcomes_total")  # orders per minute, rejections by reason
    assert shown("orderflow_saga_step_duration_seconds_bucket")
    assert shown("orderflow_outbox_oldest_age_seconds")
    assert shown("orderflow_events_parked")
    assert shown("orderflow_service_serving")
    assert shown("orderflow_orders_stuck")
    assert shown("orderflow_stock_low_items")
    assert shown("orderflow_stock", "orderflow_stock_low_threshold")
    outcomes = [e for e in dashboard_exprs() if "orderflow_saga_outcomes_total" in e]
    assert any("by (outcome)" in e for e in outcomes)
    assert any("by (reason)" in e and 'outcome="rejected"' in e for e in outcomes)
    quantiles = [e for e in dashboard_exprs() if "histogram_quantile" in e]
    assert {e.split(",")[0] for e in quantiles} == {
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    }


# -- what they read is what orderflow exports ------------------------------------------------


def test_metric_names_reads_what_an_expression_selects() -> None:
    expr = (
        'max by (sku) (orderflow_stock{state="available", sku=~"a.*"} <= ignoring (sku, state)'
        " group_left orderflow_stock_low_threshold) and on() sum(rate(x_total[$__rate_interval]"
        ' offset 5m)) > 0 or label_replace(up, "a", "$1", "job", "(b)")'
    )
    assert metric_names(expr) == {
        "orderflow_stock",
        "orderflow_stock_low_threshold",
        "x_total",
        "up",
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The sample names on the /metrics page of a started one-process system, where every
    component's metrics are (its gauges refreshed quickly, so that they are there)."""
    fast = {
        "ORDERFLOW_INVENTORY_STOCK_METRICS_INTERVAL_SECONDS": "0.1",
        "ORDERFLOW_ORDERS_STUCK_METRICS_INTERVAL_SECONDS": "0.1",
        "ORDERFLOW_GATEWAY_SERVICE_HEALTH_INTERVAL_SECONDS": "0.1",
    }
    system = start_ready(one_process(tmp_path_factory.mktemp("observability"), fast))
    try:
        deadline = time.monotonic() + 20
        while True:
            names = exported_names(httpx.get(f"{system.base_url}/metrics", timeout=5).text)
            polled = {"orderflow_stock_low_items", "orderflow_orders_stuck"}
            if polled <= names or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield names
    finally:
        system.stop()


def test_every_metric_the_rules_read_is_exported(exported: set[str]) -> None:
    read = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert {"orderflow_orders_stuck", "orderflow_service_serving", "up"} <= read
    assert read - SCRAPER_SERIES - exported == set()


def test_every_metric_the_dashboard_reads_is_exported(exported: set[str]) -> None:
    read = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert {"orderflow_saga_step_duration_seconds_bucket", "orderflow_stock_low_items"} <= read
    assert read - SCRAPER_SERIES - exported == set()
