"""The bridge's edges against real kamailio and baresip, with a recording stand-in for dispatch.

Inbound: the caller's verified number (`P-Asserted-Identity`) reaches dispatch through kamailio: the
bridge reads the caller from `From` (baresip's events carry no other header: docs/telephony.md),
and `ops/kamailio/kamailio.cfg` copies the PAI's user into From on the way in. These INVITEs are
written by hand on a UDP socket: the baresip installed here (Debian 1.0.0) has no command to add a
header to a call it places. What dispatch is told is read from the stand-in's `/v1/calls`.

Outbound: a voice call dispatch asks for with the callee's roster `language` is spoken in its voice
(Cantonese `yue`), one without in Mandarin (`cmn`); a baresip phone answers each."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.channels.http import sign
from tests.sip.harness import BridgeProcess, Kamailio, Phone, sip_installed
from tests.support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sip_installed(), reason="baresip, kamailio, espeak-ng and sox (scripts/test installs them)"),
]


class Recorder(ThreadingHTTPServer):
    """dispatch's `POST /v1/calls`, recorded and answered 202 raised."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path == "/v1/calls":
            self.server.calls.append(body)
        answer = json.dumps({"incident_id": "pai-test", "status": "raised"}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def invite(kamailio: Kamailio, sock: socket.socket, *, from_user: str, pai: str | None) -> str:
    """Send one INVITE for 6995 from `from_user` (with `pai` as P-Asserted-Identity); its Call-ID."""
    host, port = sock.getsockname()
    call_id = uuid.uuid4().hex
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port + 2} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
    headers = [
        f"INVITE sip:6995@{kamailio.address} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{kamailio.address}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:6995@{kamailio.address}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:{from_user}@{host}:{port}>",
        *([f"P-Asserted-Identity: <sip:{pai}@{kamailio.address}>"] if pai else []),
        "Content-Type: application/sdp",
        f"Content-Length: {len(sdp.encode())}",
    ]
    sock.sendto(("\r\n".join(headers) + "\r\n\r\n" + sdp).encode(), ("127.0.0.1", kamailio.port))
    return call_id


SECRET = "edges-secret"
CALLEE = "13800000002"


@dataclass
class Lab:
    kamailio: Kamailio
    recorder: Recorder
    sock: socket.socket
    bridge: BridgeProcess
    phone: Phone


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root: Path = tmp_path_factory.mktemp("pai")
    kamailio = Kamailio(root / "kamailio").start()
    recorder = Recorder()
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    env = {
        "DISPATCH_SIP_PROXY": kamailio.address,
        "DISPATCH_SIP_DISPATCH_URL": recorder.url,
        "DISPATCH_SIP_TOKEN": "dsp_test",
        "DISPATCH_GATEWAY_SECRET": SECRET,
        "DISPATCH_SIP_REPEATS": "1",
        "DISPATCH_SIP_SPEECH_RATE": "300",
    }
    bridge = BridgeProcess(root / "bridge", env).start()
    phone = Phone(CALLEE, root / "phone", kamailio.address).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        wait_until(phone.registered, timeout=20, what="the phone registered")
        yield Lab(kamailio, recorder, sock, bridge, phone)
    finally:
        sock.close()
        phone.stop()
        bridge.stop()
        recorder.shutdown()
        kamailio.stop()


def told(recorder: Recorder, call_id: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        lambda: next((c for c in recorder.calls if c["call_id"] == call_id), None),
        timeout=10,
        what="the bridge's POST /v1/calls",
    )
    return found


def test_the_p_asserted_identity_is_the_caller_dispatch_is_told(lab: Lab) -> None:
    call_id = invite(lab.kamailio, lab.sock, from_user="8001", pai="13800000003")
    assert told(lab.recorder, call_id)["caller"] == "13800000003", "the verified number, not the PBX extension"


def test_without_one_the_from_user_is_the_caller(lab: Lab) -> None:
    call_id = invite(lab.kamailio, lab.sock, from_user="13800000005", pai=None)
    assert told(lab.recorder, call_id)["caller"] == "13800000005"


@pytest.mark.parametrize(("language", "voice"), [("yue", "yue"), ("", "cmn")], ids=["cantonese", "mandarin"])
def test_the_callee_hears_the_alarm_in_the_roster_s_language(lab: Lab, language: str, voice: str) -> None:
    ref = f"lang-{voice}-1"
    call: dict[str, Any] = {
        "call_ref": ref,
        "to": f"+86{CALLEE}",
        "text": "这里是6995联防报警。东山村1组联防户张桂兰，请立即前往。",
        "ring_timeout_s": 20,
        "notification_key": f"lang-{voice}",
        "context": {"incident_id": "i", "phone": f"+86{CALLEE}", "round": 1},
    }
    if language:
        call["language"] = language
    body = json.dumps(call, ensure_ascii=False).encode()
    answered = len(lab.phone.established())
    headers = {"X-Dispatch-Signature": sign(SECRET, body), "Idempotency-Key": f"{ref}/1"}
    response = httpx.post(f"{lab.bridge.url}/v1/voice/calls", content=body, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    [dialled] = wait_until(
        lambda: [e for e in lab.bridge.log_events("sip.dialled") if e["call_ref"] == ref], what="the leg dialled"
    )
    assert dialled["voice"] == voice
    wait_until(lambda: len(lab.phone.established()) > answered, timeout=15, what="the phone answered")
