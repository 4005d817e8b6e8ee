"""Inbound webhooks: other services or providers post an event envelope instead of
publishing it. Authenticated by an HMAC-SHA256 signature, not a token:

    Webhook-Id: <delivery id>
    Webhook-Timestamp: <unix seconds>
    Webhook-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + raw body)>

The secret is the tier-1 credential `webhook.<source>` of the platform (`*`). A delivery
older (or newer) than 5 minutes is refused, each delivery id is processed once, and the
event has the same effect, exactly once by its event_id, as if it came from the stream.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import reads
from api.openapi import operation
from api.problems import BadRequest, problem
from api.responses import JSON
from erp import credentials
from erp.commands import NothingChanged
from integrations.webhooks import sign
from streams import envelope as env
from streams.inbound import context_of, inbound_envelope

BASE = "/api/v1/webhooks"
TOLERANCE_SECONDS = 300


def _refused() -> Response:
    return problem(401, "Unauthorized", "missing or invalid webhook signature")


@operation(summary="Receive an event from a platform service or provider (HMAC-signed envelope)",
           errors=(400, 401, 409, 422, 503), status=202,
           headers=(("Webhook-Id", "the delivery's id: processed once"),
                    ("Webhook-Timestamp", "unix seconds; refused when more than 5 minutes off"),
                    ("Webhook-Signature", "sha256=<hex HMAC-SHA256 of '<timestamp>.' + raw body>")))
async def receive(request: Request) -> Response:
    service = reads.service(request)
    source: str = request.path_params["source"]
    delivery, stamp = request.headers.get("webhook-id"), request.headers.get("webhook-timestamp", "")
    given = request.headers.get("webhook-signature", "")
    in_time = (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12
               and abs(time.time() - int(stamp)) <= TOLERANCE_SECONDS)
    if not delivery or not in_time:
        return _refused()
    if service.keyring is None:
        return problem(503, "Service unavailable", "webhooks need the tier-1 master keys")
    body = await request.body()
    async with service.owner_pool.connection() as conn:
        try:
            secret = await credentials.reveal(conn, service.keyring, credentials.PLATFORM,
                                              f"webhook.{source}")
        except credentials.CredentialError:
            return _refused()
        if not hmac.compare_digest(sign(secret, stamp, body), given):
            return _refused()
        seen = await conn.execute(
            "SELECT 1 FROM webhook_deliveries WHERE source = %s AND delivery_id = %s", (source, delivery))
        if await seen.fetchone():
            return JSON({"status": "duplicate"}, status_code=202)
    # Handled without holding a connection of the pool: recording an event's effect takes one.
    event = await _handle(service, source, body)
    async with service.owner_pool.connection() as conn:
        await conn.execute("INSERT INTO webhook_deliveries (source, delivery_id, event_id) "
                           "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (source, delivery, event.event_id))
    return JSON({"status": "processed", "event_id": event.event_id}, status_code=202)


async def _handle(service: Any, source: str, body: bytes) -> env.Envelope[Any]:
    """Only the events `source` publishes: its secret signs for nothing else (treasury's
    cannot suspend a tenant with auth's events)."""
    try:
        event_type = msgspec.json.decode(body, type=dict[str, Any]).get("event_type", "")
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec's own error for invalid UTF-8 in a string
        raise BadRequest("the body must be an event envelope (JSON)", field="body") from None
    found = next((s for s in service.inbound_subscriptions.get(source, ()) if s.subject == event_type), None)
    if found is None:
        raise BadRequest(f"event_type {event_type!r} is not one this service consumes from {source}",
                         field="body.event_type")
    try:
        event = inbound_envelope(body, found.payload)
    except msgspec.DecodeError as error:
        raise BadRequest(f"malformed {event_type}: {error}", field="body") from None
    with contextlib.suppress(NothingChanged):  # already as it says: a repeat
        await found.handle(event, context_of(event, event_type, body))
    return event


ROUTES = [Route(BASE + "/{source:str}", receive, methods=["POST"])]
