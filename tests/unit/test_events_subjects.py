"""The JetStream filter subject of a consumer: one subject (servers before 2.10 take no
more) that lets through every type the consumer handles and as few others as it can."""

from __future__ import annotations

import pytest

from orderflow.events import EVENT_TYPES, event_type
from orderflow.events.jetstream import covering_subject


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more at the end."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


@pytest.mark.parametrize(
    ("handled", "expected"),
    [
        (["order.confirmed"], "orderflow.events.order.confirmed"),
        (["stock.committed", "loyalty.committed"], "orderflow.events.*.committed"),
        (["order.confirmed", "order.cancelled"], "orderflow.events.order.*"),
        (["order.confirmed", "stock.returned"], "orderflow.events.*.*"),
    ],
)
def test_the_filter_covers_the_handled_types_and_as_few_others_as_one_subject_can(
    handled: list[str], expected: str
) -> None:
    subjects = [event_type(name).subject() for name in handled]
    pattern = covering_subject(subjects)
    assert pattern == expected
    let_through = {t.name for t in EVENT_TYPES if _matches(pattern, t.subject())}
    assert set(handled) <= let_through
    # orders' two follow-up types, the case that matters: nothing else gets through.
    if handled == ["stock.committed", "loyalty.committed"]:
        assert let_through == set(handled)


def test_subjects_of_different_lengths_are_covered_by_a_tail_wildcard() -> None:
    pattern = covering_subject(["a.b.c", "a.b.c.d", "a.x.c"])
    assert pattern == "a.*.>"
    assert all(_matches(pattern, s) for s in ["a.b.c", "a.b.c.d", "a.x.c"])
    with pytest.raises(ValueError, match="no subjects"):
        covering_subject([])
