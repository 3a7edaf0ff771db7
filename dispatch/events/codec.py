"""Encode events for the log and decode them back.

Invariants:
- the body is the event as JSON without a type tag; the type and schema version travel in the
  `Dispatch-Type` and `Dispatch-Schema` headers;
- decoding an unknown type or a newer schema than this code knows raises `UnknownEvent`, never
  returns a half-read event.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dispatch.events.model import ALL_EVENT_TYPES, Event

TYPE_HEADER = "Dispatch-Type"
SCHEMA_HEADER = "Dispatch-Schema"

EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in ALL_EVENT_TYPES}

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}


class UnknownEvent(ValueError):
    pass


def type_name(event: Event) -> str:
    return type(event).__name__


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def event_headers(event: Event) -> dict[str, str]:
    return {TYPE_HEADER: type(event).__name__, SCHEMA_HEADER: str(type(event).SCHEMA)}


def decode(type_tag: str | None, schema: str | None, body: bytes) -> Event:
    """Decode one stored event; raise UnknownEvent for a type or schema this code cannot read."""
    if type_tag is None or type_tag not in _decoders:
        raise UnknownEvent(f"unknown event type {type_tag!r}")
    cls = EVENT_TYPES[type_tag]
    if schema is not None and schema != str(cls.SCHEMA):
        try:
            version = int(schema)
        except ValueError:
            raise UnknownEvent(f"bad schema version {schema!r} for {type_tag}") from None
        if version > cls.SCHEMA:
            raise UnknownEvent(f"{type_tag} schema {version} is newer than this code ({cls.SCHEMA})")
    try:
        event: Event = _decoders[type_tag].decode(body)
    except msgspec.DecodeError as exc:
        raise UnknownEvent(f"{type_tag}: {exc}") from exc
    return event


def decode_headers(headers: dict[str, str] | None, body: bytes) -> Event:
    headers = headers or {}
    return decode(headers.get(TYPE_HEADER), headers.get(SCHEMA_HEADER), body)


def to_builtins(event: Event) -> dict[str, Any]:
    """The event as plain JSON-able data with its type tag (for the API and the console)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    data["type"] = type(event).__name__
    return data
