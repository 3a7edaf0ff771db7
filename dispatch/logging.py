"""Logs: structlog; console in a terminal, JSON when DISPATCH_LOG_FORMAT=json (or not a terminal).

Invariant: no full phone number reaches a log line — every string value in an event is masked
(`+86138****5678`) by the last processor before rendering, whatever key it sits under.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from dispatch.domain.phone import mask_text


def mask_phones(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_text(value)
        elif isinstance(value, (list, tuple)):
            event_dict[key] = [mask_text(v) if isinstance(v, str) else v for v in value]
    return event_dict


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        mask_phones,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_output
        else (structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    handler.addFilter(_MaskFilter())
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "litestar", "faststream", "nats"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(str(record.msg))
        if record.args:
            record.args = tuple(mask_text(str(a)) for a in (record.args if isinstance(record.args, tuple) else ()))
        return True
