"""Checks every service's integration tests share: error codes, health, reflection, schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from orderflow.platform.grpc_errors import ERROR_CODE_KEY, ERROR_DETAILS_KEY

T = 10.0  # deadline of every ordinary call, in seconds
STANDARD_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def error_code(error: grpc.aio.AioRpcError) -> str | None:
    """The orderflow error code a failed call carried in its trailing metadata."""
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_KEY)


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    raw = dict(error.trailing_metadata() or ()).get(ERROR_DETAILS_KEY)
    return json.loads(raw) if raw else {}


async def fails(
    call: Awaitable[Any], status: grpc.StatusCode, code: str | None = None
) -> grpc.aio.AioRpcError:
    """Await call, which must fail with status (and orderflow code, if given)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    assert error.code() == status, (error.code(), error.details())
    assert error.details(), "a refused call explains itself"
    if code is not None:
        assert error_code(error) == code, error.trailing_metadata()
    return error


async def assert_serving(channel: grpc.aio.Channel, service: str) -> None:
    """Health reports SERVING for the server as a whole and for service."""
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", service):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=T)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


def _target(channel: grpc.aio.Channel) -> str:
    # The aio channel keeps its target on the underlying Cython channel.
    target = channel._channel.target  # type: ignore[attr-defined]
    target = target() if callable(target) else target
    return target.decode() if isinstance(target, bytes) else str(target)


def _list_services(target: str) -> set[str]:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=T)
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    """What server reflection lists on the server behind channel (as grpcurl would ask)."""
    target = _target(channel)
    assert target.startswith("127.0.0.1:"), target
    return await asyncio.wait_for(asyncio.to_thread(_list_services, target), T)


async def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    """What alembic finds different between the migrated database at url and metadata."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: compare_metadata(MigrationContext.configure(sync_conn), metadata)
            )
    finally:
        await engine.dispose()
