"""A floor: the least a gateway making N sequential gRPC calls, each one small write, can cost.

bench/run.py runs two in the same run as orderflow: floor-7 (create, reserve, apply,
confirm, commit stock, commit points, settle) and floor-4 (the first four: an order's path).
The calls cycle over the targets, so with orders, inventory and loyalty as targets they go
orders, inventory, loyalty, orders, ... as orderflow's do.

`python -m bench.floor service --port P --database-url URL` runs a minimal gRPC server whose
one method does one small write transaction through the same platform database layer
orderflow uses (SQLite with BEGIN IMMEDIATE, or PostgreSQL).
`python -m bench.floor gateway --port P --targets a,b,c --calls N` runs a minimal FastAPI app
whose POST /api/v1/orders makes N sequential calls over persistent channels, round-robin
over the targets. `python -m bench.floor onebox ...` runs both in one process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import uuid

import grpc
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import BigInteger, Column, MetaData, String, Table, insert

from orderflow.gateway.rpc import CHANNEL_OPTIONS
from orderflow.platform.db import Database, UnitOfWork, create_database

metadata = MetaData()
writes = Table(
    "floor_writes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at_us", BigInteger, nullable=False),
)


# Built once, as orderflow builds its hot-path statements: the floor is the best case.
_WRITE = insert(writes)


def writer(database: Database) -> grpc.RpcMethodHandler:
    async def write(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with UnitOfWork(database) as uow:
            await uow.connection.execute(
                _WRITE, {"id": str(uuid.uuid4()), "at_us": time.time_ns() // 1000}
            )
            await uow.commit()
        return request

    return grpc.unary_unary_rpc_method_handler(write)


async def start_service(databases: list[Database], host: str, port: int) -> grpc.aio.Server:
    """One server; method Write<i> does one write transaction on databases[i]."""
    for database in databases:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    handler = grpc.method_handlers_generic_handler(
        "floor.Floor", {f"Write{i}": writer(db) for i, db in enumerate(databases)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server


def gateway_app(methods: list[tuple[str, str]], calls: int) -> FastAPI:
    """POST /api/v1/orders makes `calls` sequential calls, cycling over (target, method)."""
    app = FastAPI()
    channels = {t: grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t, _ in methods}
    stubs = [channels[t].unary_unary(f"/floor.Floor/{m}") for t, m in methods]

    @app.post("/api/v1/orders")
    async def place() -> JSONResponse:
        for stub in itertools.islice(itertools.cycle(stubs), calls):
            await stub(b"x", timeout=2.0)
        return JSONResponse({"status": "CONFIRMED"}, status_code=201)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve_gateway(app: FastAPI, host: str, port: int) -> None:
    config = uvicorn.Config(
        app, host=host, port=port, http="httptools", log_level="warning", access_log=False
    )
    await uvicorn.Server(config).serve()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["service", "gateway", "onebox"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--database-url", action="append", default=[])
    parser.add_argument("--targets", default="")
    parser.add_argument("--calls", type=int, default=7)
    args = parser.parse_args()
    if args.role == "service":
        database = create_database(args.database_url[0])
        server = await start_service([database], args.host, args.port)
        await server.wait_for_termination()
    elif args.role == "gateway":
        methods = [(target, "Write0") for target in args.targets.split(",")]
        await serve_gateway(gateway_app(methods, args.calls), args.host, args.port)
    else:
        # Like orderflow's one-process mode: one gRPC server, a database per "service".
        databases = [create_database(url) for url in args.database_url]
        server = await start_service(databases, args.host, args.grpc_port)  # keep a reference
        target = f"{args.host}:{args.grpc_port}"
        methods = [(target, f"Write{i}") for i in range(len(databases))]
        await serve_gateway(gateway_app(methods, args.calls), args.host, args.port)
        await server.stop(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import uvloop

    uvloop.run(main())
