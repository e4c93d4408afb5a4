"""A TCP proxy between the gateway and one service that can lose one reply on purpose.

It forwards bytes both ways and reads the HTTP/2 frames as they pass. Armed with a marker
(bytes the request message carries: a sku, a customer id), it picks the request whose
DATA carries the marker (the `nth` such request after arming), lets it reach the service,
and when the service's reply to it has been received in full (the frame that ends that
stream, sent after the handler returned, so after its commit) drops the reply and resets
the gateway's connection (SO_LINGER 0, then close: an RST). The gateway then sees
UNAVAILABLE for a call whose effect was committed: the "committed but reply lost" path.
One reset per arming; the retry on a new connection passes through.

`hold(marker)` picks a request the same way but only holds its reply back (the whole of
it, once complete) until `release()`: the service has committed, the caller still waits,
and a test can act in between (as a slow network would let things happen).

It runs its own event loop in a thread, so that it serves while a test's own loop (or
a synchronous fixture) waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS = 0x0, 0x1
END_STREAM = 0x1


@dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes


@dataclass
class FrameReader:
    """Splits one direction of an HTTP/2 connection into frames (the client's starts with
    the connection preface)."""

    preface: bool
    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[Frame]:
        self.buffer += chunk
        if self.preface:
            if len(self.buffer) < len(PREFACE):
                return []
            del self.buffer[: len(PREFACE)]
            self.preface = False
        frames = []
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[0:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFF_FFFF
            frames.append(Frame(kind, flags, stream, bytes(self.buffer[9 : 9 + length])))
            del self.buffer[: 9 + length]
        return frames


@dataclass
class Arming:
    marker: bytes
    nth: int
    seen: int = 0
    hold: bool = False  # hold the reply until release() instead of losing it


class LossyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.resets = 0  # replies dropped (and connections reset)
        self._arming: Arming | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-proxy", daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self.held = threading.Event()  # set once a held reply has come in full
        self._release = asyncio.Event()  # (of the proxy's loop)

    # -- control (from any thread) ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def arm(self, marker: str, nth: int = 1) -> None:
        """Lose the reply to the nth request (after now) whose message carries marker."""
        with self._lock:
            self._arming = Arming(marker.encode(), nth)

    def hold(self, marker: str) -> None:
        """Hold back the reply to the next request whose message carries marker, until
        release(); `held` is set once that reply has come in full."""
        self.held.clear()
        self._loop.call_soon_threadsafe(self._release.clear)
        with self._lock:
            self._arming = Arming(marker.encode(), 1, hold=True)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._arming is not None

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                client_writer.close()
                return
            targeted: dict[int, bool] = {}  # stream id -> held (else lost) for its reply
            lost = asyncio.Event()

            async def downstream() -> None:  # gateway -> service
                frames = FrameReader(preface=True)
                while chunk := await client_reader.read(65536):
                    for frame in frames.feed(chunk):
                        if frame.type == DATA and (picked := self._picks(frame.payload)):
                            targeted[frame.stream] = picked.hold
                    upstream_writer.write(chunk)
                    await upstream_writer.drain()

            async def upstream() -> None:  # service -> gateway
                frames = FrameReader(preface=False)
                while chunk := await upstream_reader.read(65536):
                    ended = [f.stream for f in frames.feed(chunk) if f.flags & END_STREAM]
                    if any(targeted.get(stream) is False for stream in ended):
                        self.resets += 1
                        lost.set()
                        return  # the reply (and whatever came with it) is never sent
                    if [stream for stream in ended if targeted.pop(stream, False)]:
                        self.held.set()
                        await self._release.wait()  # then the reply goes on, whole
                    client_writer.write(chunk)
                    await client_writer.drain()

            pumps = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(BaseException):
                        await pump
                if lost.is_set():
                    reset(client_writer)
                else:
                    client_writer.close()
                upstream_writer.close()
        except (ConnectionError, OSError):
            client_writer.close()
        finally:
            self._tasks.discard(task)

    def _picks(self, payload: bytes) -> Arming | None:
        with self._lock:
            arming = self._arming
            if arming is None or arming.marker not in payload:
                return None
            arming.seen += 1
            if arming.seen < arming.nth:
                return None
            self._arming = None  # one reset (or hold) per arming
            return arming


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: what a dead peer or a load balancer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
