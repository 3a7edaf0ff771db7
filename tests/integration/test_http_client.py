"""The channels' outbound client on real loopback sockets: every way a receiver can fail has its outcome."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from dispatch.channels.base import Delivered, Permanent, Transient
from dispatch.channels.http import MAX_BODY, HttpPoster, Unreachable, http_outcome
from dispatch.store.server import free_port
from tests.support import eventually, make_pki


async def answering(status_line: bytes, headers: bytes = b"") -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")), 0)
        await reader.readexactly(length)
        writer.write(status_line + b"\r\n" + headers + b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook"


async def answering_raw(answer: bytes) -> tuple[asyncio.Server, str]:
    """A receiver that writes exactly `answer` to the first request and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"


async def test_statuses_map_to_delivered_transient_and_permanent() -> None:
    poster = HttpPoster(timeout=5)
    cases = [
        (b"HTTP/1.1 200 OK", b"", Delivered("HTTP 200")),
        (b"HTTP/1.1 429 Too Many Requests", b"Retry-After: 7\r\n", Transient("HTTP 429", 7.0)),
        (b"HTTP/1.1 503 Service Unavailable", b"", Transient("HTTP 503", None)),
        (b"HTTP/1.1 404 Not Found", b"", Permanent("HTTP 404")),
    ]
    try:
        for status_line, headers, expected in cases:
            server, url = await answering(status_line, headers)
            async with server:
                answer = await poster.post(url, b"{}", {"Content-Type": "application/json"})
            assert http_outcome(answer) == expected
    finally:
        await poster.close()


async def test_a_refused_connection_and_a_silent_receiver_are_unreachable() -> None:
    poster = HttpPoster(timeout=0.3)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(Unreachable) as refused:
            await poster.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {})
        assert not refused.value.timeout
        async with server:
            with pytest.raises(Unreachable) as timed_out:
                await poster.post(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", b"{}", {})
        assert timed_out.value.timeout and timed_out.value.reason == "timeout"
    finally:
        await poster.close()


class Receiver:
    """A loopback HTTP/1.1 receiver that keeps connections open and counts what it saw."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                )
                self.bodies.append(await reader.readexactly(length))
                await asyncio.sleep(self.delay)
                writer.write(self.answer)
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?v=1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_connections_are_kept_alive_and_bounded_per_host() -> None:
    receiver = Receiver(delay=0.02)
    poster = HttpPoster(timeout=5, max_connections=3)
    try:
        async with receiver as url:
            for i in range(20):
                assert (await poster.post(url, b'{"n":%d}' % i, {})).status == 200
            assert receiver.connections == 1
            answers = await asyncio.gather(*(poster.post(url, b"{}", {}) for _ in range(12)))
    finally:
        await poster.close()
    assert [a.status for a in answers] == [200] * 12
    assert receiver.most_open <= 3 and receiver.connections <= 3
    assert len(receiver.bodies) == 32 and receiver.bodies[3] == b'{"n":3}'


async def test_answers_on_one_connection_are_read_apart() -> None:
    """The parser of a kept-alive connection serves every answer on it: nothing of one answer (its
    status, Retry-After, body) is carried into the next."""
    answers = [
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for answer in answers:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(answer)
            await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    poster = HttpPoster(timeout=5)
    try:
        async with server:
            got = [await poster.post(url, b"{}", {}) for _ in answers]
    finally:
        await poster.close()
    assert [(a.status, a.retry_after, a.body) for a in got] == [
        (503, "3", b"busy"),
        (200, None, b"ok"),
        (404, None, b""),
    ]
    assert connections == 1


async def test_a_bursts_extra_connections_close_once_idle_while_one_keeps_being_reused() -> None:
    receiver = Receiver(delay=0.05)
    poster = HttpPoster(timeout=5, max_connections=20, idle_s=0.3)
    try:
        async with receiver as url:
            await asyncio.gather(*(poster.post(url, b"{}", {}) for _ in range(10)))
            assert receiver.open == 10

            async def one_more_then_one_open() -> bool:
                assert (await poster.post(url, b"{}", {})).status == 200
                return receiver.open == 1

            await eventually(one_more_then_one_open, timeout=5, what="the burst's idle connections closed")
    finally:
        await poster.close()


async def test_a_connection_the_receiver_closed_while_idle_is_replaced_and_nothing_is_sent_twice() -> None:
    poster = HttpPoster(timeout=5)
    seen: list[bytes] = []
    connections = {"opened": 0, "closed": 0}

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections["opened"] += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        seen.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        connections["closed"] += 1

    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with server:
            first = await poster.post(url, b"1", {})
            raced = await poster.post(url, b"2", {})
            await eventually(
                lambda: connections["opened"] == connections["closed"], what="the receiver closed every connection"
            )
            after_close = await poster.post(url, b"3", {})
    finally:
        await poster.close()
    assert [first.status, raced.status, after_close.status] == [200, 200, 200]
    assert seen.count(b"1") == 1 and seen.count(b"3") == 1 and b"2" in seen


@pytest.mark.parametrize(
    ("answer", "status", "retry_after", "body"),
    [
        (
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
            b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
            503,
            "3",
            b"abcde",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes", 201, None, b"yes"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 200, None, b"until the end"),
        (b"HTTP/1.0 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n", 302, None, b""),
    ],
    ids=["chunked", "interim-100", "close-delimited", "redirect-not-followed"],
)
async def test_every_framing_of_an_answer_is_read_whole(
    answer: bytes, status: int, retry_after: str | None, body: bytes
) -> None:
    poster = HttpPoster(timeout=5)
    server, url = await answering_raw(answer)
    try:
        async with server:
            got = await poster.post(url, b"", {})
    finally:
        await poster.close()
    assert (got.status, got.retry_after, got.body) == (status, retry_after, body)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SMTP ready\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", "closed before the answer was complete"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1),
            "response too large",
        ),
    ],
    ids=["not-http", "truncated", "oversized"],
)
async def test_a_broken_answer_is_unreachable_not_delivered(answer: bytes, reason: str) -> None:
    poster = HttpPoster(timeout=5)
    server, url = await answering_raw(answer)
    try:
        async with server:
            with pytest.raises(Unreachable) as caught:
                await poster.post(url, b"", {})
    finally:
        await poster.close()
    assert caught.value.reason == reason and not caught.value.timeout


async def test_an_unusable_url_or_header_is_refused_before_anything_is_sent() -> None:
    poster = HttpPoster(timeout=1)
    receiver = Receiver()
    try:
        async with receiver as url:
            bad_urls = ("ftp://127.0.0.1/x", "http:///nohost", "http://127.0.0.1:99999/x", "not a url", url + " x")
            for bad in bad_urls:
                with pytest.raises(Unreachable) as caught:
                    await poster.post(bad, b"{}", {})
                assert caught.value.reason == "InvalidURL", bad
            injections = (
                {"X-Key": "a\r\nX-Evil: 1"},
                {"X-Key": "a\nX-Evil: 1"},
                {"X-Key": "a\rb"},
                {"X-Key": "a\0b"},
                {"X-Evil: 1\r\nX-Key": "a"},
                {"": "a"},
                {"Content-Type": "text/plain", "X-Key": "ok", "X-Last": "b\r\n"},
            )
            for headers in injections:
                with pytest.raises(Unreachable) as injected:
                    await poster.post(url, b"{}", headers)
                assert injected.value.reason == "invalid header", headers
    finally:
        await poster.close()
    assert receiver.bodies == []


async def test_https_verifies_the_receivers_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(pki.server_cert, pki.server_key)
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, ssl=server_side)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    trusting = HttpPoster(timeout=5, ssl_context=ssl.create_default_context(cafile=str(pki.ca)))
    default = HttpPoster(timeout=5)
    try:
        async with server:
            assert (await trusting.post(url, b'{"secure":1}', {})).status == 200
            with pytest.raises(Unreachable) as untrusted:
                await default.post(url, b"{}", {})
    finally:
        await trusting.close()
        await default.close()
    assert receiver.bodies == [b'{"secure":1}']
    assert untrusted.value.reason == "SSLCertVerificationError"
