"""The header parser put in nats-py's place gives the library's own result for every input."""

from __future__ import annotations

import itertools
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from dispatch.store.headers import LIBRARY, install_header_parser, parse_header_lines

PIECE_LIST = [
    b"\r\n",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\x1c",
    b"\x0b",
    b"Nats-Msg-Id",
    b"Dispatch-Type",
    b"\xe4\xb8\xad",
    b"\xff",
    b"\r",
    b"\n",
    b"",
    b"a b",
    b"1",
    b"NATS/1.0",
]
PIECES = st.sampled_from(PIECE_LIST)


def test_the_library_function_was_found_and_replaced() -> None:
    assert LIBRARY is not None
    assert install_header_parser() is True
    assert Client._parse_header_lines is parse_header_lines
    assert install_header_parser() is True


def test_a_stored_events_headers() -> None:
    raw = (
        b"Dispatch-Type: IncidentOpened\r\nDispatch-Schema: 1\r\nNats-Msg-Id: call:4f5e:opened\r\n"
        b"Nats-Subject: dispatch.incident.ab\r\nNats-Sequence: 12\r\nX-Name: \xe6\x9d\x91\xe5\xa7\x94\r\n\r\n"
    )
    assert parse_header_lines(raw) == {
        "Dispatch-Type": "IncidentOpened",
        "Dispatch-Schema": "1",
        "Nats-Msg-Id": "call:4f5e:opened",
        "Nats-Subject": "dispatch.incident.ab",
        "Nats-Sequence": "12",
        "X-Name": "村委",
    }
    assert parse_header_lines(raw) == LIBRARY(raw)  # type: ignore[misc]


def test_same_result_as_the_library_for_every_join_of_up_to_three_pieces() -> None:
    """Every adjacency of two or three pieces, exhaustively (5,220 inputs, milliseconds)."""
    joins = [b"".join(p) for n in range(4) for p in itertools.product(PIECE_LIST, repeat=n)]
    assert len(joins) == sum(len(PIECE_LIST) ** n for n in range(4))
    differ = [raw for raw in joins if parse_header_lines(raw) != LIBRARY(raw)]  # type: ignore[misc]
    assert differ == []


@settings(max_examples=500)
@given(st.lists(PIECES, max_size=24).map(b"".join))
def test_same_result_as_the_library_for_header_like_bytes(raw: bytes) -> None:
    """Longer joins, drawn at random (the short ones are all tried above)."""
    assert parse_header_lines(raw) == LIBRARY(raw)  # type: ignore[misc]


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_same_result_as_the_library_for_any_bytes(raw: bytes) -> None:
    assert parse_header_lines(raw) == LIBRARY(raw)  # type: ignore[misc]


def test_importing_the_store_replaces_nothing() -> None:
    """The parser is installed by an explicit call (the composition root, the CLI), never on import."""
    code = (
        "import dispatch.store.eventstore, dispatch.store.headers as h; from nats.aio.client import Client; "
        "assert Client._parse_header_lines is h.LIBRARY"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
