"""PlaceOrder over the gateway's gRPC API at a fixed concurrency for a fixed time: wrk's
counterpart for gRPC, run as its own process so its CPU is not the driver's.

    python -m bench.grpc_load 127.0.0.1:8081 --concurrency 8 --seconds 10

Prints one line as bench/order.lua does: RESULT requests=… duration_us=… p50_us=…
p99_us=… non2xx=… (calls not OK) connect=0 read=0 write=0 timeout=… (DEADLINE_EXCEEDED).
The orders are spread over the bench catalog and customers as order.lua spreads them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import time

import grpc

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc


def nearest_rank(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


async def load(target: str, concurrency: int, seconds: float, skus: int, customers: int) -> str:
    counter = itertools.count(1)
    latencies: list[int] = []
    failures = timeouts = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.OrderingServiceStub(channel)
        started = time.perf_counter()
        end = started + seconds

        async def client() -> None:
            nonlocal failures, timeouts
            while time.perf_counter() < end:
                n = next(counter)
                request = pb.PlaceOrderRequest(
                    customer_id=f"bench-{n % customers}",
                    items=[pb.PlaceOrderRequest.Line(sku=f"BENCH-{n % skus}", quantity=1)],
                )
                sent = time.perf_counter()
                try:
                    await stub.PlaceOrder(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        timeouts += 1
                    else:
                        failures += 1
                latencies.append(int((time.perf_counter() - sent) * 1e6))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return (
        f"RESULT requests={len(latencies)} duration_us={int(elapsed * 1e6)} "
        f"p50_us={nearest_rank(latencies, 50)} p99_us={nearest_rank(latencies, 99)} "
        f"non2xx={failures} connect=0 read=0 write=0 timeout={timeouts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skus", type=int, default=50)
    parser.add_argument("--customers", type=int, default=100)
    args = parser.parse_args()
    line = asyncio.run(load(args.target, args.concurrency, args.seconds, args.skus, args.customers))
    print(line, flush=True)


if __name__ == "__main__":
    main()
