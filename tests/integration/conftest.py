"""Real gRPC servers on port 0 for integration tests, one per service under test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from orderflow import registry
from orderflow.platform.component import Component
from orderflow.platform.grpc_server import RunningServer, create_server
from orderflow.settings import CommonSettings

Serve = Callable[..., Awaitable[grpc.aio.Channel]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """await serve("inventory", url, **settings) -> a channel to a real server on a free port.

    The service is built exactly as `orderflow serve` builds it (migrations included) and
    hosted with health and reflection; everything is stopped after the test.
    """
    started: list[tuple[RunningServer, Component, grpc.aio.Channel]] = []

    async def start(service: str, database_url: str, **settings: Any) -> grpc.aio.Channel:
        definition = registry.service(service)
        cfg = definition.settings_cls(database_url=database_url, **settings)
        component = await definition.build(cfg, CommonSettings())
        server = await create_server([component.spec], "127.0.0.1", 0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, component, channel))
        return channel

    yield start
    for server, component, channel in reversed(started):
        await channel.close()
        await server.stop(0)
        await component.close()
