"""The outbound HTTP client the channels share (webhook, telephony gateway, group robots).

Every alarm is one POST per recipient and channel (nine webhooks for a ten-number group), so the
client's own cost is paid nine times an alarm. It is HTTP/1.1 with keep-alive on an asyncio
protocol, answers parsed by httptools (llhttp, uvicorn's parser) as they arrive: 64-72 us of CPU
per request on this machine against aiohttp's 86-124 us, nine at a time to one receiver; httpx's
pool collapsed under concurrency (`docs/benchmarks.md`). Invariants:
- `post` returns an `HttpAnswer` for any HTTP status, or raises `Unreachable` (timeout, refused or
  reset connection, malformed or oversized response, unusable URL): the caller decides what is
  transient;
- `http_outcome` is the one status policy: 2xx delivered; 408, 425, 429 (Retry-After honoured) and
  5xx transient; any other status (redirects included: they are not followed) permanent;
- a connection goes back to the pool only after a complete response that allows keep-alive; a
  request that fails on a reused connection before any byte of its answer is sent once more on a
  fresh one (the server closed it while idle; the receivers deduplicate by Idempotency-Key);
- at most `max_connections` connections per host; one idle for `idle_s` is closed at the next
  request to its host, even while newer ones keep being reused (a burst's extra connections do not
  stay open for ever); `close` closes the pool.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import msgspec

from dispatch.channels.base import Delivered, Outcome, Permanent, Transient

TRANSIENT_STATUS = frozenset({408, 425, 429})


class HttpAnswer(msgspec.Struct, frozen=True):
    status: int
    retry_after: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Unreachable(Exception):
    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the exact body: the `X-Dispatch-Signature` header."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def http_outcome(answer: HttpAnswer) -> Outcome:
    status = answer.status
    if 200 <= status < 300:
        return Delivered(f"HTTP {status}")
    if status in TRANSIENT_STATUS or status >= 500:
        return Transient(f"HTTP {status}", retry_after(answer.retry_after))
    return Permanent(f"HTTP {status}")


MAX_BODY = 4 * 1024 * 1024
_UNSAFE_TARGET = re.compile("[\\s\x00-\x1f\x7f]")


class _NoAnswer(Exception):
    """The connection failed before any byte of the answer arrived."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Response:
    """One connection's answers, parsed as they arrive: one parser per connection, reset between
    requests (a keep-alive connection's answers follow one another on the same byte stream)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.retry_after: str | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.framed = False
        self.complete = False
        self.too_large = False
        self.keep_alive = False

    def on_headers_complete(self) -> None:
        self.status = int(self.parser.get_status_code())

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()
        elif lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self.too_large = True
            self.chunks = []
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True
            self.keep_alive = bool(self.parser.should_keep_alive())
        else:
            self.status, self.retry_after, self.chunks, self.size, self.framed = 0, None, [], 0, False


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the answer is parsed as its bytes arrive, in `data_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self._reader = _Response()
        self.waiter: asyncio.Future[None] | None = None
        self.answered = False
        self.closed = False
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (which does not subclass asyncio.Transport): both write and close
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.close()
            return
        self.answered = True
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(Unreachable("malformed response"))
            return
        if response.too_large:
            self._finish(Unreachable("response too large"))
        elif response.complete:
            self._finish(None)

    def eof_received(self) -> bool:
        self._lost("ServerDisconnected")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(type(exc).__name__ if exc else "ServerDisconnected")

    def _lost(self, reason: str) -> None:
        self.closed = True
        response = self.response
        if response is None:
            return
        if response.status and not response.framed:
            response.keep_alive = False
            self._finish(None)
        elif self.answered:
            self._finish(Unreachable("closed before the answer was complete"))
        else:
            self._finish(_NoAnswer(reason))

    def _finish(self, error: Exception | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> tuple[HttpAnswer, bool]:
        """Send one request, read its answer; (the answer, whether the connection may be reused)."""
        transport = self.transport
        if transport is None or not self.usable:
            raise _NoAnswer("ServerDisconnected")
        response = self.response = self._reader
        response.reset()
        self.answered = False
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            transport.write(request)
            await self.waiter
        finally:
            self.response = self.waiter = None
        answer = HttpAnswer(response.status, response.retry_after, b"".join(response.chunks))
        return answer, response.keep_alive and self.usable


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[_Origin, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Unreachable("InvalidURL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unreachable("InvalidURL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if _UNSAFE_TARGET.search(target):
        raise Unreachable("InvalidURL")
    return _Origin(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)), target


def url_problem(url: str) -> str | None:
    """Why this client could never post to `url` (None: it can); the reason never repeats the URL,
    which may hold a token. Credentials in the URL (user:password@) are refused: they would be
    dropped, and the receiver would answer 401 to every alarm."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    if "@" in parts.netloc:
        return "holds credentials (user:password@), which are never sent: authenticate the receiver another way"
    try:
        _split(url)
    except Unreachable:
        return "is not an http(s) URL with a host (and a valid port, path and query)"
    return None


_FRAMING = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def _head_bytes(method: str, target: str, origin: _Origin, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Length: {length}\r\n"]
    for name, value in headers.items():
        if not name:
            raise Unreachable("invalid header")
        if name.lower() in _FRAMING:
            continue
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # A CR, LF or NUL inside a name or value would add to these counts: one scan of the whole head.
    if head.count("\n") != len(lines) + 2 or head.count("\r") != len(lines) + 2 or "\0" in head:
        raise Unreachable("invalid header")
    return head.encode("utf-8")


class HttpPoster:
    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_connections: int = 200,
        idle_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self.idle_s = idle_s
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._slots: dict[_Origin, asyncio.Semaphore] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
        origin, target = _split(url)
        request = _head_bytes("POST", target, origin, headers, len(body)) + body
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self.max_connections)
        try:
            async with asyncio.timeout(self.timeout), slots:
                return await self._send(origin, request)
        except TimeoutError:
            raise Unreachable("timeout", timeout=True) from None

    async def _send(self, origin: _Origin, request: bytes) -> HttpAnswer:
        conn = self._take(origin)
        if conn is not None:
            try:
                return await self._exchange(origin, conn, request)
            except _NoAnswer:
                pass
        try:
            conn = await self._connect(origin)
        except OSError as exc:
            raise Unreachable(type(exc).__name__) from None
        try:
            return await self._exchange(origin, conn, request)
        except _NoAnswer as exc:
            raise Unreachable(exc.reason) from None

    async def _exchange(self, origin: _Origin, conn: _Connection, request: bytes) -> HttpAnswer:
        try:
            answer, keep = await conn.exchange(request)
        except BaseException:
            conn.close()
            raise
        if keep:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()
        return answer

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        # The stack is in the order connections came back, oldest first: the newest is reused, and
        # those left over from a burst are closed once idle for `idle_s`, not kept for ever.
        now = time.monotonic()
        stale = 0
        while stale < len(idle) and now - idle[stale].idle_since >= self.idle_s:
            idle[stale].close()
            stale += 1
        del idle[:stale]
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await asyncio.get_running_loop().create_connection(
            _Connection, origin.host, origin.port, ssl=context, server_hostname=origin.host if context else None
        )
        return conn

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        self._slots = {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
