"""The OpenAPI document at `/schema`, made to say what the service really answers.

Litestar derives the document from the handlers; this adds what it cannot know:
- every error is `{"error": "..."}` (the app's exception handlers), and each operation lists the
  error statuses it can answer, and only those (`ANSWERS`, why each is possible in `ERRORS`): 401
  on every operation behind a token; 403 where some role lacks the capability; 429 where the
  per-token limit applies (never the alarm routes); 409 a replayed signed request on the routes a
  gateway may use, or the incident's state; 413 and 400 where there is a body or a typed parameter
  to refuse; 415 on the roster import alone; 422 where an id or a value is well-formed but refused;
  503 where the log or the database is read or written (the directory and tokens are in memory);
- the event stream answers `text/event-stream`, the roster import takes `text/csv`, the reports
  answer `text/csv` too (`format=csv`);
- request bodies refuse unknown fields (`forbid_unknown_fields`), so their schemas say
  `additionalProperties: false`;
- the bearer token is a security scheme required by every operation but the public ones.
The document is served as JSON only: HTML viewers would load scripts from CDNs into the origin
where the console keeps its token.

Invariants: every operation is in `ANSWERS` (one missing is given every status, and fails the test);
a live service answers every status an operation declares and no other for the inputs that
produce each (tests/integration/test_openapi_statuses.py); schemathesis, run against this
document on a live service, finds every answer's status, content type and body declared
(tests/e2e/test_fuzz.py); openapi-spec-validator accepts it.
"""

from __future__ import annotations

import copy
from typing import Any

from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong, in words"}},
}
ERRORS = {
    "400": "Malformed JSON, an unknown field, a wrong type or a value out of range (named in `error`)",
    "401": "No valid bearer token, or (a signing gateway) a missing, wrong or stale signature",
    "403": "The token's role may not do this",
    "404": "Not found, or outside the token's villages",
    "409": "A gateway's signed request replayed, or (answers) not possible in the incident's state",
    "412": "If-Match names a version that is no longer the current one (changed meanwhile): read it again",
    "413": "The body is larger than this route accepts",
    "415": "The body's content type is not accepted",
    "422": "Well-formed but refused (e.g. not a phone number, an id that cannot be one)",
    "429": "Too many requests for this token (Retry-After says when to retry)",
    "503": "The event log or the database is unreachable, or a read model is being rebuilt; retry (Retry-After)",
}
EVERY_ERROR = tuple(int(code) for code in ERRORS)  # an operation not in ANSWERS yet: all, until it is listed
REPORT = (401, 403, 422, 429, 503)
# The error statuses each operation can answer (besides its success), and no others.
ANSWERS: dict[str, tuple[int, ...]] = {
    "POST /v1/calls": (400, 401, 403, 409, 413, 503),
    "POST /v1/gateway/voice": (400, 401, 403, 409, 413, 503),
    "POST /v1/gateway/sms": (400, 401, 403, 409, 413, 503),
    "POST /v1/groups/import": (400, 401, 403, 409, 413, 415, 422, 429, 503),
    "GET /v1/imports/{import_id}": (401, 403, 404, 429),
    "GET /v1/groups": (400, 401, 403, 429),
    "GET /v1/groups/{village}/{group}": (401, 403, 404, 429),
    "DELETE /v1/groups/{village}/{group}": (401, 403, 404, 429, 503),
    "GET /v1/villages": (401, 403, 429),
    "GET /v1/villages/{village}": (401, 403, 404, 429),
    "PUT /v1/villages/{village}/settings": (400, 401, 403, 412, 413, 422, 429, 503),
    "PUT /v1/members/{number}/absence": (400, 401, 403, 404, 413, 422, 429, 503),
    "DELETE /v1/members/{number}/absence": (401, 403, 404, 422, 429, 503),
    "GET /v1/members/{number}/absence": (401, 403, 404, 422, 429),
    "GET /v1/absences": (401, 403, 429),
    "POST /v1/incidents/{incident_id}/responses": (400, 401, 403, 404, 409, 413, 422, 429, 503),
    "GET /v1/incidents/{incident_id}": (401, 403, 404, 422, 429, 503),
    "GET /v1/incidents": (400, 401, 403, 429, 503),
    "POST /v1/incidents": (400, 401, 403, 404, 413, 429, 503),
    "POST /v1/drills": (400, 401, 403, 404, 409, 413, 429, 503),
    "GET /v1/drills/{drill_id}": (401, 403, 404, 429, 503),
    "DELETE /v1/drills/{drill_id}": (401, 403, 404, 409, 429, 503),
    "GET /v1/stream": (401, 403, 429, 503),
    "GET /v1/reports/response-times": REPORT,
    "GET /v1/reports/history": (400, *REPORT),
    "GET /v1/reports/stats": REPORT,
    "GET /v1/reports/readiness": (400, *REPORT),
    "GET /v1/me": (401, 409, 429),
    "GET /v1/tokens": (401, 403, 429),
    "POST /v1/tokens": (400, 401, 403, 413, 422, 429, 503),
    "DELETE /v1/tokens/{token_id}": (401, 403, 404, 429, 503),
    "GET /v1/audit": (400, 401, 403, 422, 429, 503),
    "POST /v1/broadcasts": (400, 401, 403, 413, 422, 429, 503),
    "GET /v1/broadcasts": (401, 403, 429, 503),
    "GET /v1/broadcasts/{broadcast_id}": (400, 401, 403, 404, 429, 503),
}
PUBLIC_PATHS = ("/healthz", "/readyz")
EVENT_STREAMS = ("/v1/stream",)
CSV_EXPORTS = ("/v1/reports/",)
ROSTER_IMPORT = "/v1/groups/import"
BEARER = {"type": "http", "scheme": "bearer", "description": "A dispatch token: `dsp_<id>_<secret>`"}


def refine(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of Litestar's document with the error shapes, strict bodies and bearer security."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["bearer"] = BEARER
    doc["security"] = [{"bearer": []}]
    strict: set[str] = set()
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if path in PUBLIC_PATHS:
                operation["security"] = []
                responses.pop("400", None)
                if path == "/readyz":
                    responses["503"] = _readiness_503(responses.get("200"))
                continue
            for status in [code for code in responses if code[0] in "45"]:
                del responses[status]
            for code in ANSWERS.get(f"{method.upper()} {path}", EVERY_ERROR):
                responses[str(code)] = {
                    "description": ERRORS[str(code)],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            if path in EVENT_STREAMS and "200" in responses:
                responses["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
            if path.startswith(CSV_EXPORTS) and "200" in responses:
                responses["200"].setdefault("content", {})["text/csv"] = {"schema": {"type": "string"}}
            if path == ROSTER_IMPORT:
                operation["requestBody"] = {
                    "required": True,
                    "description": "village,group,phone,role,name (UTF-8 or GB18030)",
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                }
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                strict.add(ref.rsplit("/", 1)[1])
    for name in strict:
        schema = components["schemas"].get(name)
        if isinstance(schema, dict) and schema.get("type") == "object":
            schema["additionalProperties"] = False
    return doc


def _readiness_503(ok: dict[str, Any] | None) -> dict[str, Any]:
    content = (ok or {}).get("content") or {"application/json": {"schema": {"type": "object"}}}
    return {
        "description": "Not ready: a dependency is unreachable, or an alarm could reach nobody "
        "(no delivery channel, no duty desk)",
        "content": content,
    }


class DispatchOpenAPI(JsonRenderPlugin):
    """Serves `refine(document)` as JSON (computed once: the document does not change while running)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refined: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._refined is None:
            self._refined = super().render(request, refine(openapi_schema))
        return self._refined
