"""How a domain event class goes on the wire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec


def domain_event(aggregate: type, name: str) -> type:
    """An event class that the aggregate's `@event("Name")` decorators made."""
    found: type = getattr(aggregate, name)
    return found


@dataclass(frozen=True)
class Publication:
    subject: str
    payload: type[msgspec.Struct]
    aggregate_type: str
    to_payload: Callable[[Any], msgspec.Struct]
    schema_version: int = 1
