"""Schemathesis against the service's own OpenAPI document, on a running `dispatch serve`: valid and
invalid requests for every operation; no 5xx, and every answer's status, content type and body as the
document declares; invalid input refused with a 4xx; no operation served without a token.

Bounded: FUZZ_EXAMPLES examples per operation and mode (DISPATCH_FUZZ_EXAMPLES to change), the event
stream left out (it never ends); an operation with nothing to make invalid has no negative run."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import ServeProcess, WebhookReceiver, infrastructure_ready

pytestmark = pytest.mark.e2e

FUZZ_EXAMPLES = int(os.environ.get("DISPATCH_FUZZ_EXAMPLES", "20"))
SKIPPED = {("GET", "/v1/stream")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ROSTER = """village,group,phone,role,name
fuzzville,1,13800000001,household,张三
fuzzville,1,13800000008,leader,李四
fuzzville,1,13900000009,officer,王五
"""


def checks_for(case: Any) -> list[Any]:
    """Every case: no 5xx, declared status, content type and body. A valid case: the token is really
    checked (sent without it, the answer is 401). An invalid body: refused with a 4xx. Invalid query
    parameters are not held to that (a repeated `?village=` is read, not refused)."""
    negative = [str(getattr(loc, "value", loc)) for loc, c in case.meta.components.items() if c.mode.is_negative]
    if not negative:
        return [*CHECKS, ignored_auth]
    if negative == ["body"]:
        return [*CHECKS, negative_data_rejection]
    return CHECKS


@pytest.fixture(scope="module")
def serve_env(module_receiver: WebhookReceiver) -> dict[str, str]:
    """A service that is ready: /readyz answers 503 without a delivery channel and a duty desk."""
    return {
        "DISPATCH_RATE_LIMIT": "0",
        "DISPATCH_WEBHOOK_URLS": module_receiver.url,
        "DISPATCH_WEBHOOK_SECRET": "fuzz-webhook-secret",
        "DISPATCH_DUTY_DESK": "+8673184512345",
    }


@pytest.fixture(scope="module")
def roster() -> str:
    return ROSTER


def test_schemathesis_finds_no_server_error_and_no_undeclared_answer(
    serve: ServeProcess, http: httpx.Client, imported: dict[str, int]
) -> None:
    assert imported["groups_formed"] == 1
    fuzzer = http.post("/v1/tokens", json={"name": "fuzzer", "role": "admin"}).json()["token"]
    auth = {"Authorization": f"Bearer {fuzzer}"}
    schema = schemathesis.openapi.from_url(f"{serve.url}/schema")
    session = httpx.Client()
    failures: list[str] = []
    requests = 0
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal requests
                requests += 1
                case.call_and_validate(headers=auth, checks=checks_for(case))

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, f"{operation.label}: no valid request could be generated"
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    elapsed = time.monotonic() - started
    session.close()
    print(
        f"\nschemathesis: {len(operations)} operations, {requests} requests in {elapsed:.1f} s, {len(failures)} failing"
    )
    assert failures == [], "\n\n".join(failures)
    with httpx.Client(base_url=serve.url, headers=auth, timeout=30) as fuzzer_http:
        assert infrastructure_ready(fuzzer_http), "the service did not survive the fuzzing"
    assert "Traceback" not in serve.logs(), serve.logs()[-3000:]
