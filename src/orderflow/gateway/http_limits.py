"""A cap on the size of a request's head (request line and headers), before it is parsed.

httptools gathers a header value arriving in many reads by copying what it has so far
each time: an 8 MB header costs ~140 ms of parsing on the event loop, every other request
waiting, before the app could look at it. This protocol counts the bytes of a request's
head as they arrive and, past the limit, answers 431 and stops reading that request: no
oversized header (a bearer token, a cookie) gets parsed at all. The app itself refuses a
token over ORDERFLOW_AUTH_MAX_TOKEN_BYTES before decoding it (gateway.auth).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# After answering 431 the client may still be sending; read (and drop) it this long, so
# that closing does not reset the connection before the client has read the answer.
LINGER_SECONDS = 2.0


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over max_head_bytes."""

    max_head_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what is left of the refused request
        super().data_received(data)
        if self._in_head and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps(
            {
                "error": {
                    "code": "HEADERS_TOO_LARGE",
                    "message": f"request headers are limited to {self.max_head_bytes} bytes",
                    "details": {},
                }
            }
        ).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def head_limited(max_head_bytes: int) -> type[HeadLimitedProtocol]:
    """The protocol class for uvicorn's `http=`, with this limit."""
    return type("HeadLimitedProtocol", (HeadLimitedProtocol,), {"max_head_bytes": max_head_bytes})
