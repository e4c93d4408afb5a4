"""The orders service's step log on fakes: each change writes its step in its own unit of
work, with the steps its driver reports; a change that rolls back leaves none (ADR 26)."""

from __future__ import annotations

import pytest

from orderflow.errors import InvalidArgumentError, LeaseHeldError, NotFoundError
from orderflow.orders import service as orders_service
from orderflow.orders.domain import Driver, Failure, FollowUp, Step, StepOutcome
from tests.unit.fake_uow import FakeOrdersStore
from tests.unit.test_orders_service import OTHER, OWNER, SECOND, TOTALS, create, make

OK, FAILED, UNKNOWN = StepOutcome.OK, StepOutcome.FAILED, StepOutcome.UNKNOWN
REQUEST, RECOVERY, EVENT = Driver.REQUEST, Driver.RECOVERY, Driver.EVENT


def reported(step_id: str, name: str, at: int, outcome: StepOutcome = OK) -> Step:
    error = None if outcome == OK else Failure("OUT_OF_STOCK", "MUG-1: 1 available")
    return Step(step_id, name, outcome, REQUEST, at, 2_000, error)


def log(store: FakeOrdersStore, order_id: str) -> list[tuple[str, StepOutcome, Driver]]:
    return [(s.name, s.outcome, s.driver) for o, s in store.steps.rows if o == order_id]


async def test_create_and_confirm_record_their_steps_with_the_reported_ones() -> None:
    service, store, clock = make()
    order = await create(service)
    t = clock.now
    clock.now += SECOND
    steps = [reported("r.1", "reserve", t + 10), reported("r.2", "apply_discount", t + 20)]
    await service.confirm_order(order.id, OWNER, TOTALS, REQUEST, steps)
    assert log(store, order.id) == [
        ("create", OK, REQUEST),
        ("reserve", OK, REQUEST),
        ("apply_discount", OK, REQUEST),
        ("confirm", OK, REQUEST),
    ]
    history_order, history, truncated = await service.order_history(order.id)
    assert history_order.id == order.id and not truncated
    assert [s.name for s in history] == ["create", "reserve", "apply_discount", "confirm"]
    assert history[1].started_us == t + 10 and history[1].duration_us == 2_000
    assert history[3].started_us == clock.now


async def test_a_repeated_call_records_nothing_twice() -> None:
    service, store, _ = make()
    order = await create(service)
    steps = [reported("r.1", "reserve", 1)]
    await service.confirm_order(order.id, OWNER, TOTALS, REQUEST, steps)
    count = len(store.steps.rows)
    # The gateway retried after a lost answer: same steps, a confirm that changes nothing.
    await service.confirm_order(order.id, OWNER, TOTALS, REQUEST, steps)
    await service.record_steps(order.id, steps)
    assert len(store.steps.rows) == count


async def test_a_change_that_fails_records_none_of_its_steps() -> None:
    service, store, _ = make()
    order = await create(service)
    before = list(store.steps.rows)
    with pytest.raises(LeaseHeldError):  # OTHER does not hold the lease
        await service.reject_order(
            order.id, OTHER, Failure("X", "x"), REQUEST, [reported("r.1", "reserve", 1)]
        )
    assert store.steps.rows == before
    assert store.rollbacks >= 1


async def test_reject_records_its_reason_and_the_failed_step() -> None:
    service, store, _ = make()
    order = await create(service)
    failure = Failure("OUT_OF_STOCK", "MUG-1: 1 available")
    await service.reject_order(
        order.id, OWNER, failure, REQUEST, [reported("r.1", "reserve", 1, FAILED)]
    )
    await service.settle_order(order.id, OWNER, REQUEST)
    assert log(store, order.id) == [
        ("create", OK, REQUEST),
        ("reserve", FAILED, REQUEST),
        ("reject", OK, REQUEST),
        ("settle", OK, REQUEST),
    ]
    reserve, reject = (s for o, s in store.steps.rows[1:3])
    assert reserve.error == failure and reject.error == failure


async def test_claims_are_recovery_steps_and_follow_ups_event_steps() -> None:
    service, store, clock = make()
    order = await create(service)
    clock.now += 11 * SECOND
    await service.claim_stale(OTHER, 30, 10)
    await service.confirm_order(order.id, OTHER, TOTALS, RECOVERY)
    async with store() as uow:
        await service.record_follow_up(uow, order.id, FollowUp.STOCK)
        await service.record_follow_up(uow, order.id, FollowUp.STOCK)  # a redelivery
        await service.record_follow_up(uow, order.id, FollowUp.LOYALTY)
        await uow.commit()
    assert log(store, order.id) == [
        ("create", OK, REQUEST),
        ("claim", OK, RECOVERY),
        ("confirm", OK, RECOVERY),
        ("commit_stock", OK, EVENT),
        ("commit_discount", OK, EVENT),
        ("settle", OK, EVENT),
    ]


async def test_the_cancel_saga_records_its_steps() -> None:
    service, store, _ = make()
    order = await create(service)
    await service.confirm_order(order.id, OWNER, TOTALS)
    await service.request_cancel(order.id, OWNER, 10)
    await service.cancel_order(
        order.id,
        OWNER,
        REQUEST,
        [reported("c.1", "refund_discount", 5), reported("c.2", "return_stock", 6)],
    )
    assert [name for name, _, _ in log(store, order.id)][-4:] == [
        "request_cancel",
        "refund_discount",
        "return_stock",
        "cancel",
    ]


async def test_history_is_in_time_order_and_keeps_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, _store, clock = make()
    order = await create(service)  # at clock.now
    t = clock.now
    # Reported late, but run before the create's time and after it.
    await service.record_steps(
        order.id, [reported("x.2", "release", t + 5), reported("x.1", "reserve", t - 5)]
    )
    _, steps, truncated = await service.order_history(order.id)
    assert [s.name for s in steps] == ["reserve", "create", "release"] and not truncated

    many = [reported(f"m.{i}", "release", t + 10 + i) for i in range(60)]
    for start in range(0, 60, 20):
        await service.record_steps(order.id, many[start : start + 20])
    monkeypatch.setattr(orders_service, "MAX_HISTORY", 10)
    _, steps, truncated = await service.order_history(order.id)
    assert truncated and [s.step_id for s in steps] == [f"m.{i}" for i in range(50, 60)]


async def test_bad_reports_are_refused_and_unknown_orders_are_not_found() -> None:
    service, store, _ = make()
    order = await create(service)
    with pytest.raises(NotFoundError):
        await service.record_steps("nope", [reported("r.1", "reserve", 1)])
    with pytest.raises(NotFoundError):
        await service.order_history("nope")
    bad = [
        reported("", "reserve", 1),
        reported("r.1", "", 1),
        reported("r.1", "reserve", 0),
        Step("r.1", "reserve", UNKNOWN, REQUEST, 1, 0, None),  # a failure with no error
        Step("r.1", "reserve", OK, REQUEST, 1, -1, None),
    ]
    for step in bad:
        with pytest.raises(InvalidArgumentError):
            await service.record_steps(order.id, [step])
    with pytest.raises(InvalidArgumentError):
        await service.record_steps(order.id, [reported(f"r.{i}", "x", 1) for i in range(65)])
    assert log(store, order.id) == [("create", OK, REQUEST)]
