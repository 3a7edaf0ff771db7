"""End-to-end tier: `dispatch serve` as a subprocess. What the tests measured (user properties named
`measured*`) is printed at the end of the run.

Fixtures a module shares unless it defines its own: `serve`, one process per module started with
`serve_env`; `http`, an admin client of it; `imported`, the summary of importing `roster` into it
(each once per module). A module overrides `serve_env` or `roster` to change them, and defines its own
`serve` when it needs a fresh process per test or several. `receiver` is a webhook receiver of one
test; `module_receiver` one shared by a module (what a module's `serve_env` points its webhooks at).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.rosters import ROSTER
from tests.support import ServeProcess, WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def serve_env() -> dict[str, str]:
    """The environment of the module's `serve`, beyond its data directory, address and JSON logs."""
    return {}


@pytest.fixture(scope="module")
def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, serve_env: dict[str, str]
) -> Iterator[ServeProcess]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    process = ServeProcess(tmp_path_factory.mktemp(name) / "data", serve_env).start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def http(serve: ServeProcess) -> Iterator[httpx.Client]:
    with serve.client() as client:
        yield client


@pytest.fixture(scope="module")
def roster() -> str:
    """The roster `imported` imports."""
    return ROSTER


@pytest.fixture(scope="module")
def imported(http: httpx.Client, roster: str) -> dict[str, int]:
    """`roster` imported into the module's `serve` through the API: the import's summary."""
    response = http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    summary: dict[str, int] = response.json()["summary"]
    return summary
