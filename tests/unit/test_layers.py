"""The arrows between dispatch's folders point one way: inward, to the vocabulary and the domain.

Every module's imports are read from its source (every `import`, also inside functions and under
TYPE_CHECKING) and each arrow between top-level parts of the package (`dispatch/<folder>/` or a
top-level module such as `settings.py`) must be one this table allows. A new folder or top-level
module fails here until it is given its place."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dispatch"

BASE = {"ids", "clock"}
INNER = BASE | {"events", "domain"}
# What each part may import besides itself. Read as layers from the inside out: the vocabulary
# (events) and the pure deciders (domain); the log (store); read models (projections); metrics and
# logs (observe); delivery adapters (channels); handlers; the faces (api, reports); the composition
# root (bootstrap); the SIP bridge, a process of its own beside the service (sip); what drives it (sim, cli).
ALLOWED: dict[str, set[str]] = {
    "ids": set(),
    "clock": set(),
    "events": BASE,
    "domain": BASE | {"events"},
    "store": INNER,
    "projections": INNER | {"store"},
    "observe": INNER | {"store", "projections"},
    "channels": INNER | {"store", "observe"},
    "settings": INNER | {"store", "channels"},
    "handlers": INNER | {"store", "projections", "observe", "channels"},
    "reports": INNER | {"store", "projections"},
    "api": INNER | {"store", "projections", "observe", "channels", "handlers", "reports"},
    "bootstrap": INNER | {"store", "projections", "observe", "channels", "settings", "handlers", "reports", "api"},
    "sip": INNER | {"store", "observe", "channels", "settings"},
    "sim": INNER
    | {"store", "projections", "observe", "channels", "settings", "handlers", "reports", "api", "bootstrap", "sip"},
    "cli": INNER
    | {
        "store",
        "projections",
        "observe",
        "channels",
        "settings",
        "handlers",
        "reports",
        "api",
        "bootstrap",
        "sim",
        "sip",
    },
    "__main__": {"cli"},
    "__init__": set(),
}

# Handlers never import each other (a handler's effect on another goes through the bus), only
# the machinery they share.
SHARED_HANDLER_MODULES = {"bus", "uow", "aggregates", "messages", "eager", "pool", "flood"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts), path


def imports_of(path: Path) -> set[str]:
    """Every dispatch module `path` imports (`from dispatch.x import y` counts as dispatch.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dispatch":
                found.update(f"dispatch.{alias.name}" for alias in node.names)
            elif node.module.startswith("dispatch."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("dispatch."))
    return found


def part(module: str) -> str:
    """The top-level part of the package a module belongs to: `dispatch.store.jobs` -> `store`."""
    return module.split(".")[1] if "." in module else "__init__"


IMPORTS = {module: imports_of(path) for module, path in modules()}


def test_every_part_of_the_package_has_a_place() -> None:
    assert {part(m) for m in IMPORTS} - set(ALLOWED) == set()


def test_arrows_between_parts_are_the_allowed_ones() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in IMPORTS.items()
        for target in targets
        if part(target) != part(module) and part(target) not in ALLOWED[part(module)]
    )
    assert wrong == []


def test_no_circle_between_parts() -> None:
    arrows: dict[str, set[str]] = defaultdict(set)
    for module, targets in IMPORTS.items():
        arrows[part(module)].update(part(t) for t in targets if part(t) != part(module))
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"circle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for target in sorted(arrows[node]):
            visit(target, (*path, node))
        done.add(node)

    for node in sorted(arrows):
        visit(node, ())


def test_store_knows_nothing_of_channels_handlers_or_faces() -> None:
    outer = {"channels", "handlers", "api", "projections", "cli", "sim", "observe", "bootstrap"}
    assert [
        f"{module} -> {target}"
        for module, targets in IMPORTS.items()
        if part(module) == "store"
        for target in targets
        if part(target) in outer
    ] == []


def test_handlers_do_not_import_each_other() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in IMPORTS.items()
        if part(module) == "handlers"
        for target in targets
        if part(target) == "handlers" and target.rsplit(".", 1)[1] not in SHARED_HANDLER_MODULES
    )
    assert wrong == []


def test_only_the_composition_root_builds_the_app() -> None:
    assert sorted(m for m, targets in IMPORTS.items() if "dispatch.api.app" in targets) == ["dispatch.bootstrap"]
