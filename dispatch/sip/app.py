"""The bridge's HTTP face: the gateway side of docs/gateway.md, its health and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import msgspec
import structlog
import uvicorn
from litestar import Litestar, Request, Response, get, post

from dispatch.settings import SipSettings
from dispatch.sip.bridge import Bridge, metrics_text

log = structlog.get_logger(__name__)


def create_app(bridge: Bridge) -> Litestar:
    @post("/v1/voice/calls", status_code=201)
    async def voice_call(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        if not bridge.signed(body, request.headers.get("x-dispatch-signature")):
            log.warning("sip.bad_signature", path=request.url.path)
            return Response({"error": "bad signature"}, status_code=401)
        try:
            status, answer = bridge.originate(request.headers.get("idempotency-key", ""), body)
        except msgspec.DecodeError as exc:
            return Response({"error": f"bad request: {exc}"}, status_code=400)
        headers = {"Retry-After": "2"} if status == 503 else None
        return Response(answer, status_code=status, headers=headers)

    @post("/v1/sms/messages", status_code=422)
    async def sms_out(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        if not bridge.signed(body, request.headers.get("x-dispatch-signature")):
            return Response({"error": "bad signature"}, status_code=401)
        return Response(
            {"error": "the SIP bridge places calls only: route texts to an SMS gateway (docs/telephony.md)"},
            status_code=422,
        )

    @get("/healthz")
    async def healthz() -> Response[Any]:
        up = not bridge.engine.closed.is_set() and bridge.engine.process is not None
        registered = bridge.registered.is_set()
        body = {"engine": "up" if up else "down", "registered": registered, "legs": len(bridge.legs)}
        return Response(body, status_code=200 if up and registered else 503)

    @get("/metrics")
    async def metrics() -> Response[bytes]:
        return Response(metrics_text(bridge.metrics), media_type="text/plain; version=0.0.4")

    return Litestar([voice_call, sms_out, healthz, metrics], logging_config=None, debug=False)


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
