"""What one client may make the gateway's HTTP server hold: head size, header count, URL
length, time to send a head or a body, and open connections; every refusal in the JSON
error shape.

httptools gathers a header value arriving in many reads by copying what it has so far
each time: an 8 MB header costs ~140 ms of parsing on the event loop, every other request
waiting, before the app could look at it. This protocol (uvicorn's httptools protocol,
subclassed) counts a request's head as it arrives and, past a limit, answers at once and
stops reading that request:

- head over `max_head_bytes`, or more than `max_header_count` header fields: 431
  HEADERS_TOO_LARGE; a request target over `max_url_bytes`: 414 URI_TOO_LONG;
- a head not complete `head_timeout` after the connection opened (or after the first
  byte of a later request on it): 408 REQUEST_TIMEOUT, or a quiet close if the client
  sent nothing; a body not complete `body_timeout` after its head: 408 (the app sees a
  disconnect, and counts the request as 408 through REPLIED_STATUS in its scope);
- a connection beyond `max_connections`: 503 TOO_MANY_CONNECTIONS with Retry-After,
  written as soon as it opens, and nothing of it is parsed;
- what httptools cannot parse (a control character in a header, a negative
  Content-Length): 400 MALFORMED_REQUEST, where uvicorn would answer in plain text.

After refusing, it reads and drops what the client still sends for LINGER_SECONDS, so that
closing does not reset the connection before the client has read the answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from orderflow.gateway.errors import http_status
from orderflow.settings import GatewaySettings

log = structlog.get_logger("orderflow.gateway")

LINGER_SECONDS = 2.0
# Set in a request's scope when the protocol itself answered it (a body timeout), so the
# request middleware counts and logs what the client was sent.
REPLIED_STATUS = "orderflow.replied_status"


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_url_bytes: int = 8 * 1024
    head_timeout: float = 5.0
    body_timeout: float = 10.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> HttpLimits:
        return cls(
            max_head_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            max_url_bytes=settings.max_url_bytes,
            head_timeout=settings.head_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=settings.max_connections,
        )


# Told of each request the protocol refused before the app saw it: (status).
RefusalObserver = Callable[[int], None]


class _Refusal(Exception):
    """Raised inside a parser callback to stop parsing and answer with this error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_reply(code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 reply, closing the connection, with the JSON error shape."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = [
        STATUS_LINE[http_status(code)],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        *(name + b": " + value + b"\r\n" for name, value in headers),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within `limits`; see the module docstring."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    observers: ClassVar[tuple[RefusalObserver, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        # The current request's head: under way, its bytes (raw, and as parsed), its fields.
        self._in_head = True
        self._head_started = False
        self._began_in_chunk = False
        self._raw_head_bytes = 0
        self._parsed_head_bytes = 0
        self._header_count = 0

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # lingering, it no longer takes a place
            self._refuse(
                "TOO_MANY_CONNECTIONS",
                "the gateway has too many open connections; retry shortly",
                headers=((b"retry-after", b"1"),),
            )
            return
        self._arm(self.limits.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return  # what is left of a refused request
        self._unset_keepalive_if_required()
        self._began_in_chunk = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.code, refusal.message)
            else:  # uvicorn could not take the request apart (a path that is not ASCII)
                self._refuse("MALFORMED_REQUEST", "invalid HTTP request")
            return
        except httptools.HttpParserError as exc:
            self._refuse("MALFORMED_REQUEST", f"invalid HTTP request: {exc}")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            # Else served as plain HTTP: the gateway has no WebSockets (ws="none").
            return
        # A head still incomplete: count what it has taken. A chunk in which the request
        # began may end the one before; parsed fields count for it (on_header), and the
        # next chunk counts whole.
        if self._in_head and not self._began_in_chunk:
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.limits.max_head_bytes:
                self._refuse("HEADERS_TOO_LARGE", self._head_message())

    def send_400_response(self, msg: str) -> None:
        self._refuse("MALFORMED_REQUEST", msg)

    # --- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_started = self._began_in_chunk = True
        self._raw_head_bytes = self._parsed_head_bytes = self._header_count = 0
        if self._timer is None:  # a later request on this connection; the first has one
            self._arm(self.limits.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            raise _Refusal(
                "URI_TOO_LONG", f"request targets are limited to {self.limits.max_url_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._parsed_head_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_header_count:
            raise _Refusal(
                "HEADERS_TOO_LARGE",
                f"requests are limited to {self.limits.max_header_count} header fields",
            )
        if len(self.url) + self._parsed_head_bytes > self.limits.max_head_bytes:
            raise _Refusal("HEADERS_TOO_LARGE", self._head_message())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = self._head_started = False
        self._disarm()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # handed over to the WebSocket protocol: no request of ours
        # uvicorn answers an app that failed before replying in plain text.
        cycle.send_500_response = _json_500(cycle.send)  # type: ignore[method-assign]
        self._arm(self.limits.body_timeout, self._body_timed_out)  # the body comes next

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # --- timeouts --------------------------------------------------------------------

    def _arm(self, seconds: float, handler: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        if not self._head_started:
            self._close_quietly()  # nothing asked: nothing to answer
            return
        self._refuse(
            "REQUEST_TIMEOUT",
            f"the request head did not arrive within {self.limits.head_timeout:g} s",
        )

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.flow.read_paused:  # held back by us (the app or a request before it)
            self._arm(self.limits.body_timeout, self._body_timed_out)
            return
        cycle = self.cycle
        if cycle is None:
            return
        if cycle.response_complete:
            self._close_quietly()  # answered already; the rest of its body is not awaited
        elif cycle.response_started:
            cycle.keep_alive = False  # let the reply finish, then close
        else:
            cast(dict[str, Any], cycle.scope)[REPLIED_STATUS] = 408
            cycle.disconnected = True  # the app's receive() says so; its sends go nowhere
            cycle.message_event.set()
            self._refuse(
                "REQUEST_TIMEOUT",
                f"the request body did not arrive within {self.limits.body_timeout:g} s",
                answers_cycle=True,  # and the app counts it
            )

    # --- refusing --------------------------------------------------------------------

    def _head_message(self) -> str:
        return f"request heads are limited to {self.limits.max_head_bytes} bytes"

    def _refuse(
        self,
        code: str,
        message: str,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        answers_cycle: bool = False,
    ) -> None:
        """Answer `code` and close; answers_cycle: the reply is the current request's."""
        self._refused = True
        self._disarm()
        status = http_status(code)
        log.info("http_refused", status=status, code=code, reason=message)
        if not answers_cycle:
            for observer in self.observers:
                observer(status)
            if self.cycle is not None and not self.cycle.response_complete:
                # The reply to an earlier request is yet to go out: nothing may come before
                # it. It closes the connection once it is sent.
                self.cycle.keep_alive = False
                return
        self.transport.write(error_reply(code, message, headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _close_quietly(self) -> None:
        self._refused = True
        self.transport.close()


def _json_500(send: Any) -> Callable[[], Any]:
    async def send_500_response() -> None:
        body = json.dumps(
            {"error": {"code": "INTERNAL", "message": "internal error", "details": {}}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return send_500_response


def limited_protocol(
    settings: GatewaySettings, observer: RefusalObserver | None = None
) -> type[LimitedHttpProtocol]:
    """The protocol class for uvicorn's `http=`, with the limits of these settings.

    observer: told the status of each request refused before the app saw it.
    """
    attributes = {
        "limits": HttpLimits.from_settings(settings),
        "observers": () if observer is None else (observer,),
    }
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), attributes)
