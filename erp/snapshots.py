"""Snapshots that keep the types of an aggregate's state.

The library's snapshot stores `vars(aggregate)` through the JSON transcoder, which turns
a `StrEnum` into a plain string, a tuple into a list and cannot store a dataclass: a
status compared with `is`, or a frozen value object, would come back as something else.
Here every such value is written with its type's topic and read back as that type. Only
classes of the domain package (`aggregates.`) are ever constructed when reading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from eventsourcing.domain import Snapshot
from eventsourcing.utils import get_topic, resolve_topic

DOMAIN = "aggregates."
_ENUM, _DATACLASS, _NAMEDTUPLE, _TUPLE, _SET, _FROZENSET, _DICT = (
    "__enum__", "__dataclass__", "__namedtuple__", "__tuple__", "__set__", "__frozenset__", "__dict__")


def encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return {_ENUM: get_topic(type(value)), "value": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_DATACLASS: get_topic(type(value)),
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        if hasattr(value, "_fields"):
            return {_NAMEDTUPLE: get_topic(type(value)), "items": [encode(v) for v in value]}
        return {_TUPLE: [encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {_FROZENSET: [encode(v) for v in value]}
    if isinstance(value, set):
        return {_SET: [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {_DICT: [[encode(k), encode(v)] for k, v in value.items()]}
    return value  # str, int, bool, None, Decimal, UUID, datetime: the transcoder's


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if _ENUM in value:
        return _domain_class(value[_ENUM])(value["value"])
    if _DATACLASS in value:
        return _domain_class(value[_DATACLASS])(**{k: decode(v) for k, v in value["fields"].items()})
    if _NAMEDTUPLE in value:
        return _domain_class(value[_NAMEDTUPLE])(*(decode(v) for v in value["items"]))
    if _TUPLE in value:
        return tuple(decode(v) for v in value[_TUPLE])
    if _FROZENSET in value:
        return frozenset(decode(v) for v in value[_FROZENSET])
    if _SET in value:
        return {decode(v) for v in value[_SET]}
    if _DICT in value:
        return {decode(k): decode(v) for k, v in value[_DICT]}
    raise ValueError(f"unknown encoded value {sorted(value)}")


def _domain_class(topic: str) -> Any:
    if not topic.startswith(DOMAIN):
        raise ValueError(f"{topic} is not a class of the domain")
    return resolve_topic(topic)


@dataclass(frozen=True)
class TypedSnapshot(Snapshot):
    @classmethod
    def take(cls, aggregate: Any) -> Any:
        taken = super().take(aggregate)
        return dataclasses.replace(taken, state={k: encode(v) for k, v in taken.state.items()})

    def mutate(self, _: None) -> Any:
        typed = dataclasses.replace(self, state={k: decode(v) for k, v in self.state.items()})
        return Snapshot.mutate(typed, None)
