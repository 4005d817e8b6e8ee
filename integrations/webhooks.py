"""Outbound webhooks: a tenant registers an endpoint for chosen ERP event types; each such
event is POSTed to it as the envelope we publish, signed like the webhooks we receive
(`Webhook-Id` = the event id, `Webhook-Timestamp`, `Webhook-Signature: sha256=…` over
"<timestamp>." + body, with the endpoint's secret, shown once at registration and kept
as a tier-1 credential). Failed deliveries are retried with backoff (1 s doubling to 30 s)
up to `max_attempts`; every delivery's status is kept for the tenant to see.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg_pool import AsyncConnectionPool

from erp import credentials
from streams.inbound import backoff, consume_durable

log = structlog.get_logger("erp.webhooks")

DURABLE = "erp-webhooks"
TIMEOUT_SECONDS = 10.0
CACHE_SECONDS = 30.0
DDL = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id uuid PRIMARY KEY, tenant_id text NOT NULL, url text NOT NULL,
    event_types text[] NOT NULL, created_by text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    active boolean NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_tenant ON webhook_endpoints (tenant_id) WHERE active;
CREATE TABLE IF NOT EXISTS webhook_sends (
    endpoint_id uuid NOT NULL, event_id uuid NOT NULL, tenant_id text NOT NULL, event_type text NOT NULL,
    status text NOT NULL, attempts integer NOT NULL, last_status_code integer, last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (endpoint_id, event_id)
);
"""


def secret_name(endpoint_id: Any) -> str:
    return f"webhook-out.{endpoint_id}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`, the one signature of both directions."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookDeliveries:
    def __init__(self, js: JetStreamContext, stream: str, pool: AsyncConnectionPool[Any],
                 keyring: credentials.Keyring | None, *, max_attempts: int = 8) -> None:
        self._js = js
        self._stream = stream
        self._pool = pool
        self._keyring = keyring
        self._max_attempts = max_attempts
        self._endpoints: dict[str, tuple[float, list[tuple[Any, str, list[str]]]]] = {}
        self._http = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        self.delivered = 0

    async def start(self) -> None:
        """Creates the durable consumer (from the next event on, the first time); done
        before the service takes commands, so none of their events is missed."""
        config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.NEW, ack_wait=120,
                                max_deliver=self._max_attempts, filter_subject="erp.>", max_ack_pending=200)
        await self._js.add_consumer(self._stream, config)

    async def run(self) -> None:
        try:
            await consume_durable(self._js, self._stream, DURABLE, self.start, 32, self._deliver)
        finally:
            await self._http.aclose()

    async def _deliver(self, msg: Any) -> None:
        event = _summary(msg.data)
        tenant = event.get("tenant_id", "")
        attempt = msg.metadata.num_delivered
        pending = False
        for endpoint_id, url, types in await self._subscribed(tenant):
            if event.get("event_type") in types and not await self._delivered(endpoint_id, event["event_id"]):
                ok = await self._send(endpoint_id, url, tenant, event, msg.data, attempt)
                pending = pending or not ok
        if pending and attempt < self._max_attempts:
            await msg.nak(delay=backoff(attempt))
        else:
            await msg.ack()

    async def _send(self, endpoint_id: Any, url: str, tenant: str, event: dict[str, Any], body: bytes,
                    attempt: int) -> bool:
        stamp = str(int(time.time()))
        code: int | None = None
        error: str | None = None
        try:
            secret = await self._secret(tenant, endpoint_id)
            response = await self._http.post(url, content=body, headers={
                "Content-Type": "application/json", "Webhook-Id": event["event_id"],
                "Webhook-Timestamp": stamp, "Webhook-Signature": sign(secret, stamp, body),
                "X-Tenant-ID": tenant})
            code = response.status_code
        except (httpx.HTTPError, credentials.CredentialError, RuntimeError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        ok = code is not None and 200 <= code < 300
        status = "delivered" if ok else ("failed" if attempt >= self._max_attempts else "retrying")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO webhook_sends (endpoint_id, event_id, tenant_id, event_type, status, attempts, "
                "last_status_code, last_error) VALUES (%s, %s, %s, %s, %s, 1, %s, %s) "
                "ON CONFLICT (endpoint_id, event_id) DO UPDATE SET status = excluded.status, "
                "attempts = webhook_sends.attempts + 1, last_status_code = excluded.last_status_code, "
                "last_error = excluded.last_error, updated_at = now()",
                (endpoint_id, event["event_id"], tenant, event["event_type"], status, code, error))
        if ok:
            self.delivered += 1
        else:
            log.warning("webhook delivery failed", endpoint=str(endpoint_id), status=code, error=error,
                        attempt=attempt)
        return ok

    async def _delivered(self, endpoint_id: Any, event_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM webhook_sends WHERE endpoint_id = %s AND event_id = %s "
                                     "AND status = 'delivered'", (endpoint_id, event_id))
            return await cur.fetchone() is not None

    async def _subscribed(self, tenant: str) -> list[tuple[Any, str, list[str]]]:
        cached = self._endpoints.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT endpoint_id, url, event_types FROM webhook_endpoints "
                                     "WHERE tenant_id = %s AND active", (tenant,))
            found = [(row[0], row[1], list(row[2])) for row in await cur.fetchall()]
        self._endpoints[tenant] = (time.monotonic(), found)
        return found

    def forget(self, tenant: str) -> None:
        """A tenant's endpoints changed: read them again at the next event."""
        self._endpoints.pop(tenant, None)

    async def _secret(self, tenant: str, endpoint_id: Any) -> str:
        if self._keyring is None:
            raise RuntimeError("outbound webhooks need the tier-1 master keys")
        async with self._pool.connection() as conn:
            return await credentials.reveal(conn, self._keyring, tenant, secret_name(endpoint_id))


def _summary(data: bytes) -> dict[str, Any]:
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return {k: str(found.get(k, "")) for k in ("event_id", "event_type", "tenant_id")}
