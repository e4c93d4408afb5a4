"""A cancelled unit of work gives its connection back before it ends, however often it is
cancelled meanwhile, but never waits on a clean-up that hangs for more than the grace."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.platform import db


async def test_cancelled_twice_it_ends_once_the_clean_up_is_done() -> None:
    steps: list[str] = []
    release = asyncio.Event()

    async def clean_up() -> None:
        steps.append("rollback")
        await release.wait()
        steps.append("returned")

    task = asyncio.create_task(db._to_the_end(clean_up()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()  # again, while it waits
    await asyncio.sleep(0.01)
    assert not task.done() and steps == ["rollback"]
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["rollback", "returned"]


async def test_a_clean_up_that_fails_after_a_cancel_still_ends_it_cancelled() -> None:
    async def clean_up() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("server gone")

    task = asyncio.create_task(db._to_the_end(clean_up()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await task
    assert isinstance(cancelled.value.__cause__, ConnectionError)


async def test_a_clean_up_that_hangs_is_left_behind_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(db, "GIVE_BACK_GRACE_SECONDS", 0.05)
    hanging = asyncio.Event()
    finished = asyncio.Event()

    async def clean_up() -> None:
        await hanging.wait()
        finished.set()

    task = asyncio.create_task(db._to_the_end(clean_up()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert not finished.is_set()
    hanging.set()  # it still finishes, in the background
    await asyncio.wait_for(finished.wait(), 2)


async def test_without_a_cancel_it_is_the_clean_up() -> None:
    async def clean_up() -> None:
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError):
        await db._to_the_end(clean_up())
