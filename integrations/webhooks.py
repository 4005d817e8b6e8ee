"""Outbound webhooks: a tenant registers an endpoint for chosen ERP event types; each such
event is POSTed to it as the envelope we publish, signed like the webhooks we receive
(`Webhook-Id` = the event id, `Webhook-Timestamp`, `Webhook-Signature: sha256=…` over
"<timestamp>." + body, with the endpoint's secret, shown once at registration and kept
as a tier-1 credential). Failed deliveries are retried with backoff (1 s doubling to 30 s)
up to `max_attempts`; every delivery's status is kept for the tenant to see.

The durable consumer fetches only the event types some active endpoint subscribes to (its
filter subjects follow the endpoints: a trigger NOTIFYs every change). Fetching and
acknowledging every ERP event cost the workers ~12 % of their CPU with no endpoint at all.
An endpoint gets the events of its types published after its registration has reached the
consumer, a few milliseconds later.

An endpoint must be a public https address (unless the service allows private ones), so
that a tenant cannot point the service at the platform's own network (the metadata service,
internal APIs): checked when registered, and at every connection a delivery makes, on the
addresses the connection is then made to — a name that resolved to a public address when it
was registered may resolve to another one later (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg_pool import AsyncConnectionPool

from erp import credentials
from erp.listening import listen_forever
from streams.inbound import backoff, consume_durable, deliveries, unanswered

log = structlog.get_logger("erp.webhooks")

DURABLE = "erp-webhooks"
TIMEOUT_SECONDS = 10.0
CHANGED = "erp_webhook_endpoints"  # NOTIFY channel: the endpoints changed
NO_ENDPOINT = "erp._no_webhook_endpoint"  # no event has this subject: the filter while no endpoint is active
# Instances following the endpoints at once: the last to update the filter read the latest endpoints.
FILTER_LOCK = "SELECT pg_advisory_xact_lock(hashtext('erp:webhook-filter'))"
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
CREATE OR REPLACE FUNCTION erp_webhook_endpoints_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('erp_webhook_endpoints', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER webhook_endpoints_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON webhook_endpoints FOR EACH STATEMENT EXECUTE FUNCTION erp_webhook_endpoints_changed();
"""
Endpoint = tuple[Any, str, list[str]]  # endpoint id, url, event types


def secret_name(endpoint_id: Any) -> str:
    return f"webhook-out.{endpoint_id}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`, the one signature of both directions."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookDeliveries:
    def __init__(self, js: JetStreamContext, stream: str, database_url: str, pool: AsyncConnectionPool[Any],
                 keyring: credentials.Keyring | None, *, max_attempts: int = 8,
                 private_addresses: bool = False) -> None:
        self._js = js
        self._stream = stream
        self._database_url = database_url
        self._pool = pool
        self._keyring = keyring
        self._max_attempts = max_attempts
        self._endpoints: dict[str, list[Endpoint]] = {}  # by tenant: the active ones
        self._http = (httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) if private_addresses
                      else httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False, trust_env=False,
                                             transport=public_only_transport()))
        self.delivered = 0

    async def start(self) -> None:
        """Reads the active endpoints and creates the durable consumer for their event types
        (from the next event on, the first time), or sets its filter to them; done before the
        service takes commands, so none of their events is missed, and again at every change.
        Under a lock: of instances doing this at once, the last reads the latest endpoints."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(FILTER_LOCK)
            cur = await conn.execute("SELECT tenant_id, endpoint_id, url, event_types FROM webhook_endpoints "
                                     "WHERE active")
            endpoints: dict[str, list[Endpoint]] = defaultdict(list)
            for tenant, endpoint_id, url, types in await cur.fetchall():
                endpoints[tenant].append((endpoint_id, url, list(types)))
            subjects = sorted({t for found in endpoints.values() for _, _, types in found for t in types})
            await self._js.add_consumer(self._stream, ConsumerConfig(
                durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                ack_wait=120, max_deliver=deliveries(self._max_attempts),
                filter_subjects=subjects or [NO_ENDPOINT],
                max_ack_pending=200))
        self._endpoints = dict(endpoints)

    async def run(self) -> None:
        try:
            await consume_durable(self._js, self._stream, DURABLE, self.start, 32, self._deliver)
        finally:
            await self._http.aclose()

    async def follow(self) -> None:
        """Follows the endpoints' changes for ever (a task of its own beside `run`): reads them
        again at each NOTIFY, and after a lost connection, when one may have been missed."""
        async def changed(_: Any) -> None:
            await self.start()

        await listen_forever(self._database_url, CHANGED, name="erp-webhooks", caught_up=changed,
                             notified=changed)

    async def _deliver(self, msg: Any) -> None:
        event = _summary(msg.data)
        tenant = event.get("tenant_id", "")
        attempt = msg.metadata.num_delivered
        pending = False
        gave_up = unanswered(attempt, self._max_attempts)  # the last attempt's process stopped
        for endpoint_id, url, types in self._endpoints.get(tenant, []):
            if event.get("event_type") in types and not await self._delivered(endpoint_id, event["event_id"]):
                if gave_up:
                    await self._record(endpoint_id, tenant, event, "failed", None, gave_up)
                    continue
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
        await self._record(endpoint_id, tenant, event, status, code, error)
        if ok:
            self.delivered += 1
        else:
            log.warning("webhook delivery failed", endpoint=str(endpoint_id), status=code, error=error,
                        attempt=attempt)
        return ok

    async def _record(self, endpoint_id: Any, tenant: str, event: dict[str, Any], status: str,
                      code: int | None, error: str | None) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO webhook_sends (endpoint_id, event_id, tenant_id, event_type, status, attempts, "
                "last_status_code, last_error) VALUES (%s, %s, %s, %s, %s, 1, %s, %s) "
                "ON CONFLICT (endpoint_id, event_id) DO UPDATE SET status = excluded.status, "
                "attempts = webhook_sends.attempts + 1, last_status_code = excluded.last_status_code, "
                "last_error = excluded.last_error, updated_at = now()",
                (endpoint_id, event["event_id"], tenant, event["event_type"], status, code, error))

    async def _delivered(self, endpoint_id: Any, event_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM webhook_sends WHERE endpoint_id = %s AND event_id = %s "
                                     "AND status = 'delivered'", (endpoint_id, event_id))
            return await cur.fetchone() is not None

    async def _secret(self, tenant: str, endpoint_id: Any) -> str:
        if self._keyring is None:
            raise RuntimeError("outbound webhooks need the tier-1 master keys")
        async with self._pool.connection() as conn:
            return await credentials.reveal(conn, self._keyring, tenant, secret_name(endpoint_id))


async def not_public(url: str) -> str | None:
    """Why `url` may not receive webhooks, or None: not https, or a host that is (or resolves
    to) an address other than a public one (loopback, private, link-local, reserved)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        return f"not a URL: {error}"
    if parsed.scheme != "https" or not parsed.host:
        return "webhooks go to https:// addresses"
    try:
        found = await asyncio.get_running_loop().getaddrinfo(parsed.host, parsed.port or 443,
                                                             type=socket.SOCK_STREAM)
    except OSError as error:
        return f"{parsed.host} does not resolve: {error}"
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global:
            return f"{parsed.host} is {ip}, not a public address"
    return None


class PublicOnly(httpcore.AsyncNetworkBackend):
    """Connects only to public addresses: resolves the host itself, refuses it if any of its
    addresses is not public, and connects to the addresses it checked."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise httpcore.ConnectError(f"{host} does not resolve: {error}") from error
        addresses = list(dict.fromkeys(str(address[0]) for *_, address in found))
        for address in addresses:
            if not ipaddress.ip_address(address).is_global:
                raise httpcore.ConnectError(f"{host} is {address}, not a public address")
        for address in addresses[:-1]:
            try:
                return await self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue
        return await self._backend.connect_tcp(addresses[-1], port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def public_only_transport() -> httpx.AsyncHTTPTransport:
    """httpx's transport, its connections made through `PublicOnly` (TLS still verifies the
    certificate against the URL's host name)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)  # no proxy: it would connect for us
    limits = httpx.Limits()  # httpx's defaults
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=PublicOnly())
    return transport


def _summary(data: bytes) -> dict[str, Any]:
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return {k: str(found.get(k, "")) for k in ("event_id", "event_type", "tenant_id")}
