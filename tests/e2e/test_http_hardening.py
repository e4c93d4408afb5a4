"""The gateway's HTTP server against hostile clients, over raw sockets to a started
process: oversized and too many headers, long URLs, heads and bodies that never finish,
malformed requests, clients that leave, too many connections, and what one such request
costs the process in memory. Every reply, the server's own included, has the JSON error
shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderflow.registry import SERVICE_NAMES
from tests.e2e.conftest import raw, start, unique
from tests.system import Process, System, one_process, per_service

TIMEOUT = 1.0  # head and body timeouts of the gateway under test, in seconds
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module", params=["one-process", "per-service"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The gateway of `orderflow run`, and of `orderflow serve gateway` (on SQLite)."""
    env = {
        "ORDERFLOW_LOG_LEVEL": "INFO",  # the access lines
        "ORDERFLOW_GATEWAY_HEAD_TIMEOUT_SECONDS": str(TIMEOUT),
        "ORDERFLOW_GATEWAY_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
        "ORDERFLOW_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    workdir = Path(tmp_path_factory.mktemp("http"))
    if request.param == "one-process":
        system = one_process(workdir, env)
    else:
        urls = {name: f"sqlite+aiosqlite:///{workdir}/{name}.db" for name in SERVICE_NAMES}
        system = per_service(workdir, urls, env)
    start(system)
    yield system
    system.stop()


def _gateway_process(system: System) -> Process:
    return system.processes["onebox" if "onebox" in system.processes else "gateway"]


def _port(system: System) -> int:
    return int(system.base_url.rsplit(":", 1)[1])


def _status_and_error(reply: bytes) -> tuple[int, dict[str, Any]]:
    """The status of a raw reply, and its body's error (asserting the JSON error shape)."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert headers["content-type"] == "application/json", reply[:300]
    assert int(headers["content-length"]) == len(body), reply[:300]
    payload = json.loads(body)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "details"}
    assert isinstance(payload["error"]["message"], str) and payload["error"]["details"] == {}
    return int(status_line.split()[1]), payload["error"]


def _get(extra_headers: bytes = b"", target: bytes = b"/api/v1/items") -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        + extra_headers + b"\r\n"
    )  # fmt: skip


async def _send_and_read(port: int, request: bytes) -> bytes:
    """Send a request the server may stop reading early; return its whole reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _one_reply(reader: asyncio.StreamReader) -> bytes:
    """One reply with a Content-Length, read off a connection that stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return head + await reader.readexactly(int(lengths[0].split(b":")[1]))


async def _silence(port: int, request: bytes) -> tuple[bytes, float]:
    """Send part of a request, then nothing: what comes back, and after how long."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        begun = time.perf_counter()
        writer.write(request)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10 + TIMEOUT)
        return reply, time.perf_counter() - begun
    finally:
        writer.close()


async def _metrics(system: System) -> str:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as api:
        response = await api.get("/metrics")
        assert response.status_code == 200
        return response.text


def _count(metrics: str, method: str, route: str, status: int) -> float:
    prefix = f'orderflow_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    for line in metrics.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _log_lines(system: System) -> list[dict[str, Any]]:
    lines = []
    for text in _gateway_process(system).log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(text)
            if isinstance(value, dict):
                lines.append(value)
    return lines


async def _access_line(system: System, path: str, status: int) -> dict[str, Any] | None:
    """The access line of a request to path with status, waiting a moment for it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in _log_lines(system):
            if (line.get("event"), line.get("path"), line.get("status")) == ("http", path, status):
                return line
        await asyncio.sleep(0.05)
    return None


def _memory_kb(system: System) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since the last reset) of the gateway process."""
    popen = _gateway_process(system).popen
    assert popen is not None
    status = Path(f"/proc/{popen.pid}/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split()[1])
        for line in status
        if line.startswith(("VmRSS:", "VmHWM:"))
    }


def _reset_peak(system: System) -> None:
    popen = _gateway_process(system).popen
    assert popen is not None
    Path(f"/proc/{popen.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


# --- request heads ----------------------------------------------------------------------


async def test_an_oversized_header_is_431_with_the_error_shape(gateway: System) -> None:
    # 100 KB arrives in one read (ADR 15's limit let it through), 32 MB in many.
    for size in (100 * 1024, 32 * 1024 * 1024):
        reply = await _send_and_read(_port(gateway), _get(b"X-Big: " + b"a" * size + b"\r\n"))
        status, error = _status_and_error(reply)
        assert (status, error["code"]) == (431, "HEADERS_TOO_LARGE"), reply[:300]
        assert "65536 bytes" in error["message"]


async def test_too_many_headers_are_431_with_the_error_shape(gateway: System) -> None:
    # 150 small fields fit well within the 64 KB head; their number is what is refused.
    many = b"".join(b"X-Field-%d: v\r\n" % i for i in range(150))
    status, error = _status_and_error(await _send_and_read(_port(gateway), _get(many)))
    assert (status, error["code"]) == (431, "HEADERS_TOO_LARGE")
    assert "100 header fields" in error["message"]
    # And 100,000 of them (600 KB) likewise.
    flood = b"".join(b"X-%d: v\r\n" % i for i in range(100_000))
    status, error = _status_and_error(await _send_and_read(_port(gateway), _get(flood)))
    assert (status, error["code"]) == (431, "HEADERS_TOO_LARGE")
    # Up to the limit is fine.
    fine = b"".join(b"X-Field-%d: v\r\n" % i for i in range(90))
    assert (await raw(_port(gateway), _get(fine))).startswith(b"HTTP/1.1 200 ")


async def test_a_long_request_line_is_414_with_the_error_shape(gateway: System) -> None:
    target = b"/api/v1/items?cursor=" + b"a" * 10_000
    status, error = _status_and_error(await _send_and_read(_port(gateway), _get(target=target)))
    assert (status, error["code"]) == (414, "URI_TOO_LONG")
    assert "8192 bytes" in error["message"]


async def test_an_8_mb_header_is_refused_at_once_and_does_not_stall_the_loop(
    gateway: System,
) -> None:
    port = _port(gateway)
    request = _get(b"Authorization: Bearer " + b"a" * (8 * 1024 * 1024) + b"\r\n")
    healthz: list[float] = []
    stop = asyncio.Event()

    async def probe_health() -> None:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as api:
            while not stop.is_set():
                begun = time.perf_counter()
                assert (await api.get("/healthz")).status_code == 200
                healthz.append(time.perf_counter() - begun)

    async def send_all(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the server may stop reading early
            writer.write(request)
            await writer.drain()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    prober = asyncio.create_task(probe_health())
    await asyncio.sleep(0.05)  # health checks running before, during and after
    try:
        begun = time.perf_counter()
        sending = asyncio.create_task(send_all(writer))
        first = await asyncio.wait_for(reader.read(1), 10)  # the answer, as soon as it comes
        refused_in = time.perf_counter() - begun
        reply = first + await asyncio.wait_for(reader.read(), 10)
        await sending
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await prober
        writer.close()
    assert _status_and_error(reply)[0] == 431, reply[:200]
    # Before the limits: 1.2 s to refuse (parsing, then decoding the token), and /healthz
    # delayed by about 1 s meanwhile.
    assert refused_in < 0.05, f"refused after {refused_in * 1000:.0f} ms"
    assert len(healthz) >= 3 and max(healthz) < 0.2, [round(s * 1000) for s in healthz]


@pytest.mark.parametrize(
    "request_bytes",
    [
        _get(b"X-Note: a\x01b\r\n"),  # a control character in a header value
        b"POST /api/v1/items HTTP/1.1\r\nHost: gateway\r\nContent-Length: -1\r\n\r\n",
        b"GET /api/v1/items HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1x\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["control-char", "negative-length", "bad-length", "not-http"],
)
async def test_a_malformed_request_is_400_with_the_error_shape(
    gateway: System, request_bytes: bytes
) -> None:
    status, error = _status_and_error(await _send_and_read(_port(gateway), request_bytes))
    assert (status, error["code"]) == (400, "MALFORMED_REQUEST")


async def test_a_websocket_upgrade_is_plain_http_with_the_error_shape(gateway: System) -> None:
    # There are no WebSockets here; uvicorn's WebSocket protocol answered 403 in plain text.
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    try:
        writer.write(
            b"GET /api/v1/stream HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        reply = await asyncio.wait_for(_one_reply(reader), 10)
    finally:
        writer.close()
    status, error = _status_and_error(reply)
    assert (status, error["code"]) == (404, "NOT_FOUND")


# --- slow clients -----------------------------------------------------------------------


async def test_an_incomplete_head_is_408_within_the_timeout(gateway: System) -> None:
    reply, after = await _silence(_port(gateway), b"GET /api/v1/items HTTP/1.1\r\nHost: gat")
    status, error = _status_and_error(reply)
    assert (status, error["code"]) == (408, "REQUEST_TIMEOUT")
    assert TIMEOUT * 0.9 <= after < TIMEOUT + 2, after


async def test_a_connection_that_sends_nothing_is_closed_within_the_timeout(
    gateway: System,
) -> None:
    reply, after = await _silence(_port(gateway), b"")
    assert reply == b""  # nothing was asked, so nothing is answered
    assert TIMEOUT * 0.9 <= after < TIMEOUT + 2, after


async def test_a_stalled_body_is_408_within_the_timeout_and_counted_so(gateway: System) -> None:
    before = _count(await _metrics(gateway), "POST", "unmatched", 408)
    head = (
        b"POST /api/v1/items HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    reply, after = await _silence(_port(gateway), head + b'{"sku": ')
    status, error = _status_and_error(reply)
    assert (status, error["code"]) == (408, "REQUEST_TIMEOUT")
    assert TIMEOUT * 0.9 <= after < TIMEOUT + 2, after
    assert await _access_line(gateway, "/api/v1/items", 408) is not None
    metrics = await _metrics(gateway)
    assert _count(metrics, "POST", "unmatched", 408) == before + 1
    assert _count(metrics, "POST", "unmatched", 500) == 0


async def test_a_body_in_parts_within_the_timeout_and_a_slow_next_request_are_served(
    gateway: System,
) -> None:
    sku = unique("SKU")
    body = json.dumps({"sku": sku, "name": "Slow", "price": 100, "stock": 1}).encode()
    head = (
        b"POST /api/v1/items HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    try:
        writer.write(head + body[:10])
        await asyncio.sleep(TIMEOUT / 3)
        writer.write(body[10:])
        first = await asyncio.wait_for(_one_reply(reader), 10)
        assert first.startswith(b"HTTP/1.1 201 "), first
        # Idle on a kept-alive connection is not a slow head: the next request, after
        # longer than the head timeout, is served.
        await asyncio.sleep(TIMEOUT * 1.5)
        writer.write(_get(target=f"/api/v1/items/{sku}".encode()))
        second = await asyncio.wait_for(reader.read(), 10)
        assert second.startswith(b"HTTP/1.1 200 "), second
    finally:
        writer.close()


# --- clients that leave, and too many of them ---------------------------------------------


async def test_a_client_that_leaves_mid_body_is_counted_and_logged_as_499(gateway: System) -> None:
    metrics = await _metrics(gateway)
    before = _count(metrics, "POST", "unmatched", 499)
    head = (
        b"POST /api/v1/orders HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    writer.write(head + b'{"customer_id": ')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()  # gone, well within the body timeout
    await writer.wait_closed()
    assert await _access_line(gateway, "/api/v1/orders", 499) is not None, "no 499 line"
    metrics = await _metrics(gateway)
    assert _count(metrics, "POST", "unmatched", 499) == before + 1
    assert _count(metrics, "POST", "unmatched", 500) == 0
    assert not [
        line
        for line in _log_lines(gateway)
        if line.get("event") == "http" and line.get("status") == 500
    ]


async def test_connections_beyond_the_limit_get_503_with_the_error_shape(gateway: System) -> None:
    await asyncio.sleep(3)  # connections refused by earlier tests have lingered and closed
    port = _port(gateway)
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        try:
            for reader, _writer in extra:
                reply = await asyncio.wait_for(reader.read(), 5)
                status, error = _status_and_error(reply)
                assert (status, error["code"]) == (503, "TOO_MANY_CONNECTIONS")
                assert b"\r\nretry-after: 1\r\n" in reply
        finally:
            for _reader, writer in extra:
                writer.close()
        # Those within the limit are served (before their head timeout).
        reader, writer = opened[0]
        writer.write(_get(target=b"/healthz"))
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
    finally:
        for _reader, writer in opened:
            writer.close()


# --- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        _get(b"X-Big: " + b"a" * (32 * 1024 * 1024) + b"\r\n"),
        _get(b"".join(b"X-%d: v\r\n" % i for i in range(100_000))),
        _get(target=b"/" + b"a" * (32 * 1024 * 1024)),
    ],
    ids=["32-mb-header", "100k-headers", "32-mb-url"],
)
async def test_one_hostile_request_costs_the_gateway_no_more_than_a_few_mb(
    gateway: System, hostile: bytes
) -> None:
    port = _port(gateway)
    assert (await raw(port, _get(target=b"/healthz"))).startswith(b"HTTP/1.1 200 ")
    _reset_peak(gateway)
    before = _memory_kb(gateway)
    reply = await _send_and_read(port, hostile)
    await asyncio.sleep(0.2)
    after = _memory_kb(gateway)
    assert _status_and_error(reply)[0] in (414, 431)
    # Before the limits: a 32 MB header grew the gateway by ~33 MB. The peak counts, not
    # only what is left: a buffer freed after the request was still memory held.
    peak, kept = after["VmHWM"] - before["VmRSS"], after["VmRSS"] - before["VmRSS"]
    assert peak < 4 * 1024 and kept < 4 * 1024, f"peak +{peak} kB, kept +{kept} kB"
