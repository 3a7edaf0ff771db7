"""The channels' outbound client on real loopback sockets: every way a receiver can fail has its outcome."""

from __future__ import annotations

import asyncio

import pytest

from dispatch.channels.base import Delivered, Permanent, Transient
from dispatch.channels.http import HttpPoster, Unreachable, http_outcome
from dispatch.store.server import free_port


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
