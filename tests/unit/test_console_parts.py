"""The console's parts that need no browser: recent activity and its charts, the CSRF token."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from orderflow.gateway.console import charts, session
from orderflow.gateway.metrics import GatewayMetrics, RecentActivity


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_recent_activity_counts_outcomes_per_minute_for_the_last_hour() -> None:
    clock = Clock(1_000_020.0)  # 20 s into a minute
    recent = RecentActivity(minutes=60, clock=clock)
    recent.outcome("confirmed")
    recent.outcome("confirmed")
    recent.outcome("rejected")
    clock.now += 120  # two minutes later
    recent.outcome("confirmed")
    minutes = recent.per_minute()
    assert len(minutes) == 60
    assert minutes[-1] == (int(clock.now // 60) * 60, {"confirmed": 1})
    assert minutes[-3][1] == {"confirmed": 2, "rejected": 1}
    clock.now += 3600  # an hour on: all of it is gone
    recent.outcome("rejected")
    assert sum(sum(c.values()) for _, c in recent.per_minute()) == 1


def test_recent_step_latency_is_nearest_rank_over_the_last_hour() -> None:
    clock = Clock(5_000.0)
    recent = RecentActivity(clock=clock)
    recent.step("reserve", 99.0)  # an hour and more ago: left out
    clock.now += 3601
    for ms in range(1, 101):
        recent.step("reserve", ms / 1000)
    recent.step("confirm", 0.004)
    found = {x.step: x for x in recent.latency()}
    assert found["reserve"].count == 100
    assert found["reserve"].p50 == pytest.approx(0.050)
    assert found["reserve"].p99 == pytest.approx(0.099)
    assert found["confirm"].p50 == found["confirm"].p99 == pytest.approx(0.004)


def test_the_sagas_observer_feeds_recent_activity() -> None:
    metrics = GatewayMetrics()
    metrics.outcome("rejected", "OUT_OF_STOCK")
    metrics.step("reserve", 0.003, False)
    assert metrics.recent.per_minute()[-1][1] == {"rejected": 1}
    assert [x.step for x in metrics.recent.latency()] == ["reserve"]


def test_charts_draw_each_outcome_and_say_it_in_words() -> None:
    minutes: list[tuple[int, dict[str, int]]] = [(60 * m, {}) for m in range(58)] + [
        (60 * 58, {"confirmed": 3, "rejected": 1}),
        (60 * 59, {"unfinished": 2}),
    ]
    svg = str(charts.outcomes_per_minute(minutes))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "3 confirmed, 1 rejected, 2 unfinished" in svg
    assert svg.count("<rect") == 3
    assert 'fill="#cf222e"' in svg  # rejected
    latency = str(charts.step_latency([]))
    assert "no saga steps in the last hour" in latency
    bar = str(charts.stock_bar(5, 0, 15))
    assert 'aria-label="5 available, 0 reserved, 15 sold"' in bar
    assert bar.count("<rect") == 2


def test_chart_text_is_escaped() -> None:
    from orderflow.gateway.metrics import StepLatency

    svg = str(charts.step_latency([StepLatency("<script>", 1, 0.001, 0.002)]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def _request(cookies: dict[str, str]) -> Any:
    return SimpleNamespace(cookies=cookies, state=SimpleNamespace())


def test_the_csrf_token_is_bound_to_the_browser_and_its_session() -> None:
    browser = {session.CSRF_COOKIE: "random-value"}
    signed_in = {**browser, session.TOKEN_COOKIE: "the-admins-token"}
    before = session.csrf_token(_request(browser))
    after = session.csrf_token(_request(signed_in))
    assert len(before) == 64 and before != after
    session.check_csrf(_request(signed_in), after)
    for wrong in ("", before, "0" * 64):
        with pytest.raises(session.CsrfError):
            session.check_csrf(_request(signed_in), wrong)
    other_browser = {session.CSRF_COOKIE: "another-value", session.TOKEN_COOKIE: "the-admins-token"}
    with pytest.raises(session.CsrfError):
        session.check_csrf(_request(other_browser), after)
    with pytest.raises(session.CsrfError):  # no CSRF cookie at all
        session.check_csrf(_request({session.TOKEN_COOKIE: "the-admins-token"}), after)
