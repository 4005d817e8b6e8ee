"""The envelope every event travels in, and the NATS headers that carry its metadata."""

from __future__ import annotations

from datetime import datetime
from hashlib import sha1
from typing import Any, Generic, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

# Deterministic ids: a republished event keeps its id, so subscribers deduplicate it.
_EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:event")
_NAMESPACE_BYTES = _EVENT_ID_NAMESPACE.bytes

DataT = TypeVar("DataT")

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
AGGREGATE_ID = "Erp-Aggregate-Id"
AGGREGATE_TYPE = "Erp-Aggregate-Type"
AGGREGATE_VERSION = "Erp-Aggregate-Version"
LOG_POSITION = "Erp-Log-Position"
CORRELATION_ID = "Erp-Correlation-Id"
CAUSATION_ID = "Erp-Causation-Id"
SCHEMA_VERSION = "Erp-Schema-Version"


def event_id(aggregate_id: UUID | str, version: int) -> UUID:
    """`uuid5(namespace, f"{aggregate_id}:{version}")`, without its per-call overhead (the
    relay and a rebuild make one for every event)."""
    digest = sha1(b"%s%s:%d" % (_NAMESPACE_BYTES, str(aggregate_id).encode(), version)).digest()
    return UUID(bytes=digest[:16], version=5)


class Envelope(msgspec.Struct, Generic[DataT], frozen=True, kw_only=True):
    """The integration guide's envelope; `data` is the event type's payload Struct."""

    event_id: UUID
    event_type: str
    tenant_id: str
    timestamp: datetime
    data: DataT


_encoder = msgspec.json.Encoder(decimal_format="number")  # money is a JSON number
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode(envelope: Envelope[Any]) -> bytes:
    return _encoder.encode(envelope)


def decode(payload: bytes, data_type: type[DataT]) -> Envelope[DataT]:
    """Decodes and validates an envelope whose `data` is a `data_type`; raises only
    msgspec.DecodeError (ValidationError for invalid values). Text holding a NUL character
    is refused like any invalid value (PostgreSQL cannot store it)."""
    decoder = _decoders.get(data_type)
    if decoder is None:
        decoder = _decoders[data_type] = msgspec.json.Decoder(Envelope[data_type])  # type: ignore[valid-type]
    try:
        envelope: Envelope[DataT] = decoder.decode(payload)
    except UnicodeDecodeError as error:  # msgspec's own error for invalid UTF-8 inside a string
        raise msgspec.DecodeError(f"Invalid UTF-8 in a string: {error.reason}") from None
    if b"\\u0000" in payload:  # JSON carries a NUL character only escaped
        _refuse_nul(msgspec.to_builtins(envelope), "$")
    return envelope


def _refuse_nul(value: Any, path: str) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise msgspec.ValidationError(f"Text must not contain a NUL character - at `{path}`")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, path)
            _refuse_nul(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nul(item, f"{path}[{i}]")
