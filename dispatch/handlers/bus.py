"""The message bus: one table from a message's type to what handles it, built in the composition root.

Invariants:
- a command has exactly one handler and its result goes back to the sender; an event has any number
  of handlers, run in the order registered, after the event is durable in the log;
- handlers never import each other: a handler that needs another's effect sends a command or reacts
  to an event through the bus, and `dispatch.bootstrap` alone decides who handles what;
- an error in a handler propagates to the sender (the message that caused it is retried by whoever
  holds it: a JetStream redelivery, a gateway retry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

M = TypeVar("M")
Handler = Callable[[Any], Awaitable[Any]]


class UnknownMessage(LookupError):
    """A command sent with no handler registered: a wiring error in the composition root."""


class MessageBus:
    """Commands to their one handler, events to their handlers."""

    def __init__(self) -> None:
        self.commands: dict[type, Handler] = {}
        self.events: dict[type, list[Handler]] = {}

    def register(self, kind: type[M], handler: Callable[[M], Awaitable[Any]]) -> None:
        """`handler` takes every command of type `kind` (one handler per command type)."""
        if kind in self.commands:
            raise ValueError(f"{kind.__name__} already has a handler")
        self.commands[kind] = handler

    def subscribe(self, kind: type[M], handler: Callable[[M], Awaitable[Any]]) -> None:
        """`handler` reacts to every event of type `kind`, after those registered before it."""
        self.events.setdefault(kind, []).append(handler)

    async def handle(self, command: object) -> Any:
        """Run the command's handler and return its result."""
        handler = self.commands.get(type(command))
        if handler is None:
            raise UnknownMessage(f"no handler for {type(command).__name__}")
        return await handler(command)

    async def publish(self, event: object) -> None:
        """Run every handler of a stored event, in order."""
        for handler in self.events.get(type(event), ()):
            await handler(event)

    def table(self) -> dict[str, list[str]]:
        """Who handles what, by name: for docs and tests."""
        out = {kind.__name__: [_name(self.commands[kind])] for kind in self.commands}
        for kind, handlers in self.events.items():
            out.setdefault(kind.__name__, []).extend(_name(h) for h in handlers)
        return out


def _name(handler: Handler) -> str:
    owner = getattr(handler, "__self__", None)
    return f"{type(owner).__name__}.{handler.__name__}" if owner is not None else handler.__qualname__
