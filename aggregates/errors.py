"""Domain errors, named for the rule they enforce.

Two kinds, so the API can answer each in one place: a `RuleViolation` is refused
because of the document's current state (409 Conflict); an `InvalidValue` is refused
because of what was asked for, whatever the state (422 Unprocessable Content).
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every rule the domain enforces."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def rule(self) -> str:
        return type(self).__name__


class RuleViolation(DomainError):
    """The aggregate's current state forbids the command."""


class InvalidValue(DomainError):
    """The command carries a value the rules never accept."""
