"""docs/asyncapi.json is current, complete and closed: every subject pattern the code builds is a channel
in it, every channel is used by the code, every reference resolves, every event has one channel."""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dispatch.api import asyncapi
from dispatch.events import subjects
from dispatch.events.model import ALL_EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.json"
PACKAGE = ROOT / "dispatch"
SUBJECTS_PY = PACKAGE / "events" / "subjects.py"
GENERATOR_PY = PACKAGE / "api" / "asyncapi.py"
NOT_SUBJECTS = {"dispatch.db"}  # the SQLite file name in settings.py


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOC.read_text())
    return doc


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def constants_of(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def pattern_of(node: ast.AST, names: dict[str, str]) -> str | None:
    """A string or f-string as a subject pattern (each interpolation one `*`), if it is a dispatch subject."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        parts = []
        for i, part in enumerate(node.values):
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif i == 0 and isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name):
                if part.value.id not in names:
                    return None
                parts.append(names[part.value.id])
            else:
                parts.append("*")
        text = "".join(parts)
    else:
        return None
    if not text.startswith("dispatch.") or " " in text or is_module(text.rstrip(".")):
        return None
    return text


def used_names() -> set[str]:
    """Every name referenced outside subjects.py (a subject helper nobody calls is not a subject in use)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path in (SUBJECTS_PY, GENERATOR_PY):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add(node.name)
    return names


def patterns_in(node: ast.AST, names: dict[str, str]) -> set[str]:
    """Subject patterns in a syntax tree; the pieces of an f-string count only as the whole f-string."""
    pieces = {id(part) for sub in ast.walk(node) if isinstance(sub, ast.JoinedStr) for part in sub.values}
    return {
        p for sub in ast.walk(node) if id(sub) not in pieces and (p := pattern_of(sub, names)) is not None
    } - NOT_SUBJECTS


def code_patterns() -> set[str]:
    """Every subject pattern built anywhere in the package (but the document's own generator)."""
    subject_constants = constants_of(ast.parse(SUBJECTS_PY.read_text()))
    used = used_names()
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path == GENERATOR_PY:
            continue
        tree = ast.parse(path.read_text())
        names = {**subject_constants, **constants_of(tree)}
        if path == SUBJECTS_PY:
            for node in tree.body:
                owner = None
                if isinstance(node, ast.FunctionDef):
                    owner = node.name
                elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    owner = node.targets[0].id
                if owner is not None and owner in used:
                    found |= patterns_in(node, names)
            continue
        found |= patterns_in(tree, names)
    return found


def tokens(subject: str) -> list[str]:
    return subject.split(".")


def matches(pattern: str, address: str) -> bool:
    """NATS matching of a code pattern against a documented address (`{param}` is one concrete token)."""
    want, have = tokens(pattern), tokens(address)
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have):
            return False
        if token == "*" or token == have[i] or (have[i].startswith("{") and token.startswith("{")):
            continue
        return False
    return len(want) == len(have)


def covered(pattern: str, addresses: list[str]) -> bool:
    if pattern.endswith("."):
        return any(a.startswith(pattern) for a in addresses)
    if any(matches(pattern, a) for a in addresses):
        return True
    return any(matches(pattern + ".>", a) for a in addresses)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_committed_document_is_the_generated_one() -> None:
    assert DOC.read_text() == asyncapi.render(), "regenerate: python -m dispatch.api.asyncapi > docs/asyncapi.json"


def test_every_subject_pattern_the_code_uses_is_documented() -> None:
    patterns = code_patterns()
    for expected in (
        "dispatch.evt.incident.*",
        "dispatch.evt.notice.*",
        "dispatch.evt.>",
        "dispatch.evt.*.*",
        "dispatch.deliver.*",
        "dispatch.sched.incident.*.*",
        "dispatch.timer.>",
        "dispatch.ingress.call",
        "dispatch.gateway.voice.>",
        "dispatch.dead.*",
        "dispatch.evt.village.",
    ):
        assert expected in patterns, f"the scan no longer finds {expected}: is it still built this way?"
    assert "dispatch.console.*" not in patterns, "an unused helper counted as a subject in use"
    doc = load()
    addresses = [c["address"] for c in doc["channels"].values()]
    addresses += [
        op["x-dispatch-deliver-subject"] for op in doc["operations"].values() if "x-dispatch-deliver-subject" in op
    ]
    missing = sorted(p for p in patterns if not covered(p, addresses))
    assert missing == [], f"subjects the code uses that docs/asyncapi.json lacks: {missing}"


def test_every_documented_channel_is_used_by_the_code() -> None:
    patterns = code_patterns()
    exact = [p for p in patterns if "*" in p and ">" not in p and not p.endswith(".")]
    for channel_id, channel in load()["channels"].items():
        address = channel["address"]
        assert any(matches(p, address) for p in exact) or address.startswith(subjects.CALL_INGRESS), channel_id
        params = {t[1:-1] for t in tokens(address) if t.startswith("{")}
        assert params == set(channel.get("parameters", {})), channel_id


def test_every_reference_resolves_and_every_operation_names_its_channels_messages() -> None:
    doc = load()
    for ref in refs(doc):
        resolve(doc, ref)
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name


def test_every_event_type_is_carried_by_exactly_one_channel() -> None:
    doc = load()
    carriers: dict[str, list[str]] = {}
    for channel_id, channel in doc["channels"].items():
        for name in channel.get("messages", {}):
            carriers.setdefault(name, []).append(channel_id)
    for cls in ALL_EVENT_TYPES:
        assert len(carriers.get(cls.__name__, [])) == 1, cls.__name__
        message = doc["components"]["messages"][cls.__name__]
        assert message["headers"]["properties"]["Dispatch-Type"]["const"] == cls.__name__
        assert set(doc["components"]["schemas"][cls.__name__]["properties"]) == set(cls.__struct_fields__)
