"""Domain errors: each names the HTTP status an API maps it to, and a reason a person can read."""

from __future__ import annotations


class DomainError(Exception):
    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(DomainError):
    status = 404


class NotPermitted(DomainError):
    status = 403


class InvalidTransition(DomainError):
    status = 409


class InvalidCommand(DomainError):
    status = 422
