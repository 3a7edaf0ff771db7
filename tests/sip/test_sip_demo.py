"""`dispatch demo --sip`: the story over kamailio, baresip phones and the bridge, as printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.sip.harness import sip_installed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sip_installed(), reason="baresip, kamailio, espeak-ng and sox (scripts/test installs them)"),
]


def test_the_demo_tells_the_story_over_sip() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatch", "demo", "--sip"], capture_output=True, text=True, timeout=240
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "同组其余 9 部电话同时振铃" in out, out
    assert out.count("的电话响了（SIP INVITE）") >= 9
    assert "covered=True" in out
    assert "处置完毕" in out
