"""Readiness: the gateway is ready when each of the three services reports SERVING."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orderflow.inventory.v1 import inventory_pb2
from orderflow.loyalty.v1 import loyalty_pb2
from orderflow.orders.v1 import orders_pb2

SERVICE_NAMES = {
    "orders": orders_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,
    "inventory": inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    "loyalty": loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].full_name,
}

Probe = Callable[[], Awaitable[str]]

log = structlog.get_logger("orderflow.readiness")


class Readiness:
    """Asks each service's gRPC health endpoint; a probe returns SERVING or what went wrong."""

    def __init__(self, probes: dict[str, Probe]) -> None:
        self.probes = probes

    @classmethod
    def over_grpc(cls, channels: dict[str, grpc.aio.Channel], timeout: float) -> Readiness:
        def probe(name: str, channel: grpc.aio.Channel) -> Probe:
            stub = health_pb2_grpc.HealthStub(channel)

            async def check() -> str:
                try:
                    response = await stub.Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAMES[name]), timeout=timeout
                    )
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code().name)
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

            return check

        return cls({name: probe(name, ch) for name, ch in channels.items()})

    async def check(self) -> dict[str, str]:
        names = list(self.probes)
        results = await asyncio.gather(*(self.probes[n]() for n in names))
        return dict(zip(names, results, strict=True))

    async def watch(self, record: Callable[[dict[str, str]], None], interval: float) -> None:
        """Check every interval seconds and hand each answer to record (the gateway's
        orderflow_service_serving gauge), until cancelled."""
        while True:
            try:
                record(await self.check())
            except Exception as exc:  # a probe that raised: try again next round
                log.warning("service_health_check_failed", error=str(exc))
            await asyncio.sleep(interval)
