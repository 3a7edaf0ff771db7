"""ops/proxy/nginx.conf works: Debian's nginx runs that very file (ports, certificate and upstream
substituted) in front of `dispatch serve`; plain HTTP redirects, the console loads over TLS, a call
goes through, and the console's event stream passes an alarm on at once and stays open."""

from __future__ import annotations

import os
import queue
import re
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from dispatch.store.server import free_port
from tests.support import ServeProcess, make_pki, wait_until

pytestmark = pytest.mark.e2e

CONF = Path(__file__).resolve().parents[2] / "ops" / "proxy" / "nginx.conf"
ROSTER = (
    "village,group,phone,role,name\npx,1,13700000001,household,甲\npx,1,13700000008,leader,乙\n"
    "px,1,13700000009,officer,丙\n"
)


def substitute(text: str, old: str, new: str) -> str:
    assert old in text, f"ops/proxy/nginx.conf no longer has {old!r}: update this test with it"
    return text.replace(old, new)


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([smh]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


def test_the_stream_location_never_buffers_and_outlives_the_keepalive() -> None:
    text = CONF.read_text()
    stream = text[text.index("location = /v1/stream") :]
    stream = stream[: stream.index("\n    }")]
    assert re.search(r"^\s*proxy_buffering off;", stream, re.M), "an alarm must not wait in nginx's buffer"
    read = re.search(r"^\s*proxy_read_timeout (\S+);", stream, re.M)
    assert read and seconds(read.group(1)) >= 4 * 15, "longer than several 15 s keepalives"


def test_nginx_in_front_of_the_service(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: ./scripts/test installs Debian's nginx"
    pki = make_pki(tmp_path / "pki")
    trust = ssl.create_default_context(cafile=str(pki.ca))
    serve = ServeProcess(tmp_path / "data", {}).start()
    http_port, https_port = free_port(), free_port()
    site = CONF.read_text()
    site = substitute(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{serve.http_port};")
    site = substitute(site, "    listen 80;\n    listen [::]:80;", f"    listen 127.0.0.1:{http_port};")
    site = substitute(
        site,
        "    listen 443 ssl http2;\n    listen [::]:443 ssl http2;",
        f"    listen 127.0.0.1:{https_port} ssl http2;",
    )
    site = substitute(site, "/etc/nginx/tls/dispatch.crt", str(pki.server_cert))
    site = substitute(site, "/etc/nginx/tls/dispatch.key", str(pki.server_key))
    root = tmp_path / "nginx"
    root.mkdir()
    (root / "dispatch.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off; worker_processes 1; pid {root / 'nginx.pid'}; error_log {root / 'error.log'} info;\n"
        f"events {{}}\nhttp {{ access_log {root / 'access.log'}; {temp} include {root / 'dispatch.conf'}; }}\n"
    )
    checked = subprocess.run(
        [nginx, "-t", "-p", str(root), "-c", str(root / "nginx.conf")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf")], stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{https_port}"
    events: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    listener = threading.Thread()
    try:
        with httpx.Client(base_url=base, verify=trust, timeout=10) as anon:
            wait_until(lambda: _answers(anon), what="nginx listening")
            redirect = httpx.get(f"http://127.0.0.1:{http_port}/console/", follow_redirects=False)
            assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://"), redirect
            assert anon.get("/console/").status_code == 200
            assert anon.get("/metrics").status_code == 403, "metrics only from the monitoring network"
        http = httpx.Client(base_url=base, verify=trust, timeout=30, headers=serve.headers)
        imported = http.post("/v1/groups/import", content=ROSTER, headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text

        def listen() -> None:
            try:
                with (
                    httpx.Client(verify=trust, timeout=httpx.Timeout(10, read=60)) as sse,
                    sse.stream("GET", f"{base}/v1/stream", params={"access_token": serve.token}) as response,
                ):
                    events.put(f"status {response.status_code}")
                    for line in response.iter_lines():
                        events.put(line)
                        if stop.is_set():
                            return
            except httpx.HTTPError as exc:  # the proxy stopped under it at the end
                events.put(f"error {exc!r}")

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert events.get(timeout=10) == "status 200"
        assert events.get(timeout=10) == "event: hello"
        sent = time.monotonic()
        called = http.post("/v1/calls", json={"call_id": "px-1", "caller": "13700000001"})
        assert called.status_code == 202, called.text
        while events.get(timeout=10) != "event: incident":
            pass
        latency = time.monotonic() - sent
        assert latency < 5, f"the alarm waited {latency:.1f} s in the proxy"
        print(f"alarm through nginx to an open event stream in {latency * 1000:.0f} ms")
        http.close()
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        serve.terminate()
        if listener.is_alive():
            listener.join(15)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
