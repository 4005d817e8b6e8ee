"""The envelope every event travels in, and the NATS headers that carry its metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

# Deterministic ids: a republished event keeps its id, so subscribers deduplicate it.
_EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:event")

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


def event_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid5(_EVENT_ID_NAMESPACE, f"{aggregate_id}:{version}")


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
    """Decodes and validates an envelope whose `data` is a `data_type`."""
    decoder = _decoders.get(data_type)
    if decoder is None:
        decoder = _decoders[data_type] = msgspec.json.Decoder(Envelope[data_type])  # type: ignore[valid-type]
    envelope: Envelope[DataT] = decoder.decode(payload)
    return envelope
