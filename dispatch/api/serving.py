"""How the HTTP server reads requests: deadlines for headers and bodies, a cap on connections.

Uvicorn has `timeout_keep_alive` (idle time between requests) and `limit_concurrency`, but nothing
bounds how long a client may take to *send* a request (encode/uvicorn#157, open since 2018): its
keep-alive timer is cancelled by the first byte received and re-armed only when a response ends,
so a client that sends half a header line and stops holds its connection, and a file descriptor,
for ever (issue 26: 200 such connections stayed open). Its httptools protocol does not bound the
header size either (measured: one connection sent a 300 MiB header line and the process peaked at
620 MiB). `limit_concurrency` answers 503 only once a request's headers have arrived, so idle
connections past it are never refused, and it counts the asking connection itself (with N open,
every request is 503).

`GuardedHttpTools` is the protocol uvicorn would use here (httptools), with:
- a header deadline: a request line and its headers must be complete within `header_timeout` of
  the connection opening, or of the first byte after the previous request; if not, 408 (when a
  request has begun) and close;
- a header size cap: more than MAX_HEADER_BYTES before the headers end is 431 and close;
- a body deadline: the body must be complete within `body_timeout` of its headers, plus 1 s per
  BODY_MIN_RATE bytes received (mod_reqtimeout's MinRate), so a large roster over a slow link
  completes while a body trickled a byte at a time does not hold its connection; time while
  reading is paused (the application has not taken what came) is not the client's; if late, 408
  (when no response has started) and close;
- a keep-alive longer than clients' pools keep idle connections (`keepalive_timeout`, 75 s as
  nginx's, against uvicorn's 5 s): with equal idle times a client may send its next request on a
  connection the server closed in the same instant, and read a reset instead of an answer (seen
  with httpx, whose pool keeps a connection 5 s, on a loaded machine);
- a connection cap: the connection past `max_connections` is closed as soon as it is accepted,
  before anything is read, so idle connections cannot pile up descriptors (those the process needs
  to ring phones: outgoing deliveries).

Invariants: a timer runs only while the client owes bytes of a request, never while a response is
being written (an event stream lives as long as it likes); a refused connection is counted by
`refused(reason)` with reason `header_timeout`, `header_too_large`, `body_timeout` or
`too_many_connections`. These hooks are the protocol's parser callbacks, as in uvicorn 0.30 to
0.55; `tests/integration/test_http_timeouts.py` checks them against the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers (nginx allows 32 KiB, h11 16 KiB); a token and a signature are < 1 KiB."""

BODY_MIN_RATE = 16 * 1024
"""Bytes a second (128 kbit/s, a poor mobile uplink) that earn a body one more second."""

FD_RESERVE = 256
"""Descriptors kept beyond the HTTP connections: NATS, the database, outgoing deliveries, logs."""


class GuardedHttpTools(HttpToolsProtocol):
    """Uvicorn's httptools protocol with header and body deadlines, a header cap and a connection cap."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0
        self._in_message = False

    @staticmethod
    def refused(reason: str) -> None:
        """Count a refusal (`guarded_protocol(refused=...)` replaces this)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.refused("too_many_connections")
            self.transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and not self._in_message and not self._responding():
            self._arm_header_timer()  # bytes between requests (a stray CRLF cancels uvicorn's keep-alive timer)
        if self._header_timer is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._header_timer is not None and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse("header_too_large", 431, answer=not self._responding())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:  # not a protocol upgrade
            self._body_deadline = self.loop.time() + self.body_timeout
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_late)

    def on_body(self, body: bytes) -> None:
        if self._body_timer is not None and not self.cycle.response_complete:
            self._body_deadline += len(body) / BODY_MIN_RATE
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_body_timer()
        super().on_message_complete()

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = 0

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        self._refuse("header_timeout", 408, answer=self._in_message and not self._responding())

    def _body_late(self) -> None:
        self._body_timer = None
        now = self.loop.time()
        if self.flow.read_paused:
            self._body_deadline = max(self._body_deadline, now + self.body_timeout)
        if now < self._body_deadline:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_late)
            return
        self._refuse("body_timeout", 408, answer=not self.cycle.response_started)

    def _refuse(self, reason: str, status: int, *, answer: bool) -> None:
        """Close the connection, first answering `status` if that cannot interleave with a response."""
        if self.transport.is_closing():
            return
        self.refused(reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's receive() ends, its send() writes nothing
            cycle.message_event.set()
        if answer:
            body = HTTPStatus(status).phrase.encode()
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n")
            head.append(b"content-length: %d\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        self.transport.close()


def guarded_protocol(
    *,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    refused: Callable[[str], None] | None = None,
) -> type[GuardedHttpTools]:
    """The protocol class with these limits (uvicorn makes one instance per connection from a class)."""
    attributes: dict[str, object] = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
    }
    if refused is not None:
        attributes["refused"] = staticmethod(refused)
    return cast(type[GuardedHttpTools], type(GuardedHttpTools.__name__, (GuardedHttpTools,), attributes))


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    keepalive_timeout: float = 75.0,
    refused: Callable[[str], None] | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration the service runs with: the guarded protocol, no logging of its own."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(
            header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections, refused=refused
        ),
        log_config=None,
        access_log=False,
        timeout_keep_alive=keepalive_timeout,  # type: ignore[arg-type]  # uvicorn's hint says int; call_later takes any
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


def descriptor_room(max_connections: int) -> tuple[int, int]:
    """Raise the open-file soft limit, within the hard one, to `max_connections` + FD_RESERVE if it is
    lower; returns (the soft limit now, the descriptors wanted)."""
    wanted = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, wanted
