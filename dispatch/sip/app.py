"""The bridge's HTTP face: the gateway side of docs/gateway.md, its health and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
import uvicorn

from dispatch.settings import SipSettings
from dispatch.sip.bridge import Bridge, metrics_text

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def create_app(bridge: Bridge) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A bare ASGI app (four routes: a framework would double the bridge's start time)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = b""
        if method == "POST":
            while True:
                message = await receive()
                body += message.get("body", b"")
                if len(body) > MAX_BODY:
                    await _reply(send, 413, {"error": "body over 64 KiB"})
                    return
                if not message.get("more_body"):
                    break
        if method == "POST" and path in ("/v1/voice/calls", "/v1/sms/messages"):
            if not bridge.signed(body, headers.get("x-dispatch-signature")):
                log.warning("sip.bad_signature", path=path)
                await _reply(send, 401, {"error": "bad signature"})
            elif path == "/v1/sms/messages":
                error = "the SIP bridge places calls only: route texts to an SMS gateway (docs/telephony.md)"
                await _reply(send, 422, {"error": error})
            else:
                try:
                    status, answer = bridge.originate(headers.get("idempotency-key", ""), body)
                except msgspec.DecodeError as exc:
                    status, answer = 400, {"error": f"bad request: {exc}"}
                await _reply(send, status, answer, retry_after=status == 503)
        elif method == "GET" and path == "/healthz":
            up = not bridge.engine.closed.is_set() and bridge.engine.process is not None
            registered = bridge.registered.is_set()
            answer = {"engine": "up" if up else "down", "registered": registered, "legs": len(bridge.legs)}
            await _reply(send, 200 if up and registered else 503, answer)
        elif method == "GET" and path == "/metrics":
            await _send(send, 200, metrics_text(bridge.metrics), "text/plain; version=0.0.4")
        else:
            await _reply(send, 404, {"error": f"no route {method} {path}"})

    return app


async def _reply(send: Send, status: int, body: dict[str, Any], *, retry_after: bool = False) -> None:
    extra = [(b"retry-after", b"2")] if retry_after else []
    await _send(send, status, json.dumps(body, ensure_ascii=False).encode(), "application/json", extra)


async def _send(
    send: Send, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run_bridge(settings: SipSettings) -> int:
    """Start the bridge and serve until SIGTERM/SIGINT, or until the engine dies (exit 1)."""
    bridge = Bridge(settings)
    await bridge.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(bridge),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = loop.create_task(server.serve())
    while not server.started:
        if serving.done():
            await bridge.stop()
            await serving
            raise RuntimeError(f"dispatch sip could not listen on {settings.http}")
        await asyncio.sleep(0.02)
    log.info("sip.ready", http=settings.http, sip=settings.listen, proxy=settings.proxy, user=settings.user)
    engine_died = loop.create_task(bridge.engine.closed.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([engine_died, stopping, serving], return_when="FIRST_COMPLETED")
    code = 1 if engine_died.done() and not stop.is_set() else 0
    if code:
        log.error("sip.engine_died", tail=bridge.engine.tail(800))
    server.should_exit = True
    with contextlib.suppress(Exception):
        await serving
    for task in (engine_died, stopping):
        task.cancel()
    await bridge.stop()
    return code
