"""Logs: structlog; console in a terminal, JSON when DISPATCH_LOG_FORMAT=json (or not a terminal).

Invariants:
- no full phone number reaches a log line: every string in an event — at any depth, under any key,
  the event name and a formatted traceback included — is masked (`+86138****5678`) by the last
  processor before rendering; anything else that is not a number is turned into masked text;
- records of the standard library's loggers (uvicorn, asyncio, faststream, nats) are rendered the
  same way (one JSON object per line with DISPATCH_LOG_FORMAT=json) and masked after formatting, so
  their tracebacks are masked too;
- an incident-scoped line carries `incident_id`: handlers bind it with structlog's contextvars,
  which `merge_contextvars` adds to every line logged inside.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any

import structlog

from dispatch.domain.phone import mask_text

_PLAIN = (int, float, bool, type(None))


def masked(value: Any) -> Any:
    """`value` with every phone-like run in its text masked; containers are walked, numbers kept."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {mask_text(str(k)): masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [masked(v) for v in value]
    return mask_text(str(value))


def mask_phones(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask every value of the event (see `masked`)."""
    return {key: masked(value) for key, value in event_dict.items()}


class MaskingFormatter(structlog.stdlib.ProcessorFormatter):
    """Standard-library records rendered like structlog's lines (JSON or console), the whole output
    (message, arguments, traceback) masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


def configure(fmt: str = "auto", level: str = "info", *, cache: bool = False) -> None:
    """Set up structlog and the standard library's logging for this process (stderr). `cache`: each
    module's logger is built once, at its first line, and never again (a long-running process that
    configures once: `dispatch serve`); without it every call builds the logger anew (~10 µs, most
    of a filtered-out line's cost), so a later `configure` (a test's) reaches loggers already used."""
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
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *processors],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "litestar", "faststream", "nats"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    sys.excepthook = _masked_excepthook
    threading.excepthook = _masked_thread_excepthook


def _masked_excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(mask_text("".join(traceback.format_exception(kind, value, tb))))


def _masked_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _masked_excepthook(args.exc_type, args.exc_value, args.exc_traceback)
