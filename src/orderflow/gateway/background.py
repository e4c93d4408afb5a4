"""Saga work that need not keep the client waiting, run after the reply in this process.

Once an order is CONFIRMED the client has its answer; its follow-ups (commit_stock,
commit_discount) and settling the order run in a task here. Nothing is lost if the
process dies first: the order stays unsettled, and the recovery worker (of this gateway
or another) finishes it once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from orderflow.gateway.budget import budget

log = structlog.get_logger("orderflow.background")


class Background:
    def __init__(self, step_seconds: float) -> None:
        self.step_seconds = step_seconds
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def run(self, key: str, work: Coroutine[Any, Any, Any]) -> None:
        """Start work for key (an order id) with a budget of its own, after the current step."""

        async def guarded() -> None:
            with budget(self.step_seconds):
                try:
                    await work
                except Exception:  # the order stays unsettled: recovery finishes it
                    log.exception("background_failed", order_id=key)

        task = asyncio.create_task(guarded(), name=f"finish:{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def wait(self, key: str) -> None:
        """Return once the work for key (if any is running here) has finished."""
        task = self._tasks.get(key)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float) -> None:
        """Let running work finish (graceful shutdown); what is left goes to recovery."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _done, left = await asyncio.wait(tasks, timeout=grace)
        for task in left:
            task.cancel()
        if left:
            log.warning("background_abandoned", count=len(left))
