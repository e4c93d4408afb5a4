"""The worker that finds orders left unsettled past their lease and finishes them."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from orderflow.errors import OrderflowError
from orderflow.gateway.budget import budget
from orderflow.gateway.ports import Order, OrdersPort
from orderflow.gateway.saga import OrderSaga, new_owner
from orderflow.platform.telemetry import span

log = structlog.get_logger("orderflow.recovery")


class RecoveryWorker:
    def __init__(
        self,
        saga: OrderSaga,
        orders: OrdersPort,
        *,
        interval: float,
        batch: int,
        lease_seconds: float,
        step_seconds: float,
        owner_prefix: str = "recovery",
        concurrency: int = 8,
    ) -> None:
        self.saga = saga
        self.orders = orders
        self.interval = interval
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.step_seconds = step_seconds
        self.owner = new_owner(owner_prefix)
        self._limit = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Claim one batch of stale orders and drive each; returns how many were claimed."""
        with budget(self.step_seconds):
            claimed = await self.orders.claim_stale(self.owner, self.lease_seconds, self.batch)
        if claimed:
            log.info("recovery_claimed", count=len(claimed))
            await asyncio.gather(*(self._finish(order) for order in claimed))
        return len(claimed)

    async def _finish(self, order: Order) -> None:
        async with self._limit:
            with (
                structlog.contextvars.bound_contextvars(order_id=order.id),
                budget(self.step_seconds),
                span("recovery.resume", order_id=order.id, status=order.status),
            ):
                try:
                    result = await self.saga.resume(order, self.owner)
                    log.info("recovery_step", status=result.status, settled=result.settled)
                except OrderflowError as exc:
                    # Left unsettled: the lease runs out and a later round tries again.
                    log.warning("recovery_deferred", code=exc.code, error=exc.message)

    async def run(self) -> None:
        while True:
            claimed = 0
            try:
                claimed = await self.run_once()
            except OrderflowError as exc:
                log.warning("recovery_round_failed", code=exc.code, error=exc.message)
            except Exception:
                log.exception("recovery_round_crashed")
            if claimed < self.batch:
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="orderflow-recovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
