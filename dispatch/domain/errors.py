"""Domain errors: each names the HTTP status an API maps it to, and a reason a person can read."""

from __future__ import annotations


class DomainError(Exception):
    """A command refused for a reason a person can read; `status` is its HTTP status."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(DomainError):
    """No such incident, group, village or token (404)."""

    status = 404


class NotPermitted(DomainError):
    """This person or token may not do this (403)."""

    status = 403


class InvalidTransition(DomainError):
    """Not possible in the aggregate's state, e.g. answering a closed incident (409)."""

    status = 409


class Stale(DomainError):
    """Decided on a version the aggregate has moved past, e.g. an If-Match that no longer matches (412)."""

    status = 412


class InvalidCommand(DomainError):
    """The command itself is malformed (422)."""

    status = 422
