"""The event catalogue for the other services' engineers, generated from the msgspec
payloads: an AsyncAPI 3 document of the ERP stream (a channel per subject, its envelope
and headers) and a JSON Schema per event. Both are checked in under `docs/` and a test
fails when the code and they differ (`python -m streams.asyncapi` rewrites them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from streams import envelope as env
from streams.catalogue import PUBLICATIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHECKED_IN = DOCS / "asyncapi.json"
SCHEMAS = DOCS / "events"
HEADERS = {
    "Nats-Msg-Id": "the event_id: JetStream deduplicates on it",
    env.AGGREGATE_ID: "the aggregate the event belongs to",
    env.AGGREGATE_TYPE: "its type, e.g. opportunity",
    env.AGGREGATE_VERSION: "its version after the event",
    env.LOG_POSITION: "the event's position in the ERP's global log (= order in the stream)",
    env.CORRELATION_ID: "the request or event chain it belongs to",
    env.CAUSATION_ID: "the request or event that caused it",
    env.SCHEMA_VERSION: "the payload's schema version",
}


def document() -> dict[str, Any]:
    publications = sorted(PUBLICATIONS.values(), key=lambda p: p.subject)
    envelopes = [env.Envelope[p.payload] for p in publications]  # type: ignore[name-defined]
    schemas, components = msgspec.json.schema_components(
        envelopes, ref_template="#/components/schemas/{name}")
    headers = {"type": "object", "properties": {name: {"type": "string", "description": text}
                                                for name, text in HEADERS.items()}}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for publication, schema in zip(publications, schemas, strict=True):
        name = publication.subject.replace(".", "_")
        messages[name] = {
            "name": publication.subject, "title": publication.subject,
            "summary": (publication.payload.__doc__ or "").strip().split("\n")[0],
            "contentType": "application/json", "headers": {"$ref": "#/components/schemas/ErpHeaders"},
            "payload": schema,
            "x-aggregate-type": publication.aggregate_type, "x-schema-version": publication.schema_version,
        }
        channels[name] = {"address": publication.subject,
                          "messages": {name: {"$ref": f"#/components/messages/{name}"}}}
        operations[f"receive_{name}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{name}"},
                                         "summary": f"Subscribe to {publication.subject}"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "ERP service events", "version": "1.0.0",
                 "description": "Every event the ERP publishes to the JetStream stream ERP (subjects erp.>), "
                                "in the integration guide's envelope {event_id, event_type, tenant_id, "
                                "timestamp, data}. Deduplicate by event_id."},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "nats:4222", "protocol": "nats",
                             "description": "JetStream stream ERP"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {**components, "ErpHeaders": headers}, "messages": messages},
    }


def event_schemas() -> dict[str, dict[str, Any]]:
    """A standalone JSON Schema of each event's envelope, by subject."""
    return {p.subject: {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": p.subject,
                        **msgspec.json.schema(env.Envelope[p.payload])}  # type: ignore[name-defined]
            for p in PUBLICATIONS.values()}


def rendered() -> dict[Path, str]:
    """Every catalogue file and its text."""
    def text(value: Any) -> str:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    files = {CHECKED_IN: text(document())}
    files.update({SCHEMAS / f"{subject}.json": text(schema) for subject, schema in event_schemas().items()})
    return files


if __name__ == "__main__":  # rewrite the checked-in catalogue
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for stale in SCHEMAS.glob("*.json"):
        stale.unlink()
    for path, content in rendered().items():
        path.write_text(content)
    sys.stdout.write(f"wrote {CHECKED_IN} and {len(list(SCHEMAS.glob('*.json')))} schemas in {SCHEMAS}\n")
