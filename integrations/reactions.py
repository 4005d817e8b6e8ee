"""Work in other services that ERP events call for, done over REST for tenants that
configure it: treasury's documents, and notification messages.

By default treasury subscribes to our subjects and does the work itself. A tenant whose
treasury is reached over REST instead has the tier-1 credentials `peer.treasury.url` and
`peer.treasury.credential`; for it, this reaction calls treasury and records the answer
as an event: opportunity won → invoice (InvoiceLinked), purchase order received → bill
(BillLinked), payroll processed → payment (Paid once treasury reports it processed).

The reaction reads the ERP stream through its own durable consumer (its checkpoint, kept
by JetStream across restarts). Each call's Idempotency-Key derives from the event, so a
redelivery or a retry never makes a second invoice; recording the answer is a command
keyed by the event too. An unreachable treasury is retried with backoff (or when its
breaker half-opens); a refusal is parked in the dead-letter stream with its reason.

Notifications: for a tenant with `peer.notifications.url` and `.credential`, each
notifiable event its preferences (tier 2) name is sent on each chosen channel.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg_pool import AsyncConnectionPool

from aggregates.dates import business_date
from aggregates.errors import DomainError
from aggregates.tenant_settings import NOTIFIABLE
from erp import credentials
from erp.commands import CommandContext, CommandRunner, Loader, NothingChanged, crm, hrm, procurement
from erp.eventstore import EventMetadata
from erp.idempotency import INBOUND_KEY_PREFIX, IdempotencyKey
from integrations.inventory import Inventory, StockMovementRequest
from integrations.notifications import MessageRequest, Notifications
from integrations.policy import PeerRefused, PeerResponseInvalid, PeerUnavailable, idempotency_key
from integrations.transport import PeerConfig, PeerTransport
from integrations.treasury import BillRequest, InvoiceRequest, PayeeLine, PayrollPaymentRequest, Treasury
from projections.positions import ReadModelPositions
from streams import envelope as env
from streams.catalogue import PAYLOADS_BY_SUBJECT
from streams.inbound import backoff, consume_durable, deliveries, park, unanswered
from streams.jetstream import header

log = structlog.get_logger("erp.reactions")

TREASURY_SUBJECTS = ("erp.opportunity.won", "erp.purchase_order.received", "erp.payroll.processed")
NOTIFIED_SUBJECTS = tuple(sorted(f"erp.{name}" for name in NOTIFIABLE))
INVENTORY_SUBJECTS = ("erp.purchase_order.goods_received",)
SUBJECTS = tuple(sorted({*TREASURY_SUBJECTS, *NOTIFIED_SUBJECTS, *INVENTORY_SUBJECTS}))
CONFIG_CACHE_SECONDS = 60.0
DURABLE = "erp-reactions"


class Park(Exception):
    """Treasury refused or answered something unusable: a person must look."""


class TreasuryReactions:
    def __init__(self, js: JetStreamContext, stream: str, runner: CommandRunner,
                 pool: AsyncConnectionPool[Any], keyring: credentials.Keyring | None,
                 transport: PeerTransport, positions: ReadModelPositions, dead_letters: str, *,
                 max_deliver: int = 20) -> None:
        self._js = js
        self._stream = stream
        self._runner = runner
        self._pool = pool
        self._keyring = keyring
        self._transport = transport
        self._positions = positions
        self._dead_letters = dead_letters
        self.parked = 0
        self._max_deliver = max_deliver
        self._configs: dict[tuple[str, str], tuple[float, PeerConfig | None]] = {}
        self.called = 0
        self.skipped = 0  # events of tenants whose treasury subscribes itself

    async def start(self) -> None:
        """Creates the durable consumer (from the next event on, the first time); done
        before the service takes commands, so none of their events is missed."""
        config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.NEW, ack_wait=120,
                                max_deliver=deliveries(self._max_deliver),
                                filter_subjects=list(SUBJECTS), max_ack_pending=100)
        await self._js.add_consumer(self._stream, config)

    async def run(self) -> None:
        await consume_durable(self._js, self._stream, DURABLE, self.start, 16, self._deliver)

    async def _deliver(self, msg: Any) -> None:
        attempt = msg.metadata.num_delivered
        if reason := unanswered(attempt, self._max_deliver):
            await self._park(msg, reason, attempt - 1)
            return
        try:
            await self._react(msg)
        except (Park, PeerRefused, PeerResponseInvalid, DomainError) as refused:
            await self._park(msg, f"treasury reaction refused: {refused}", attempt)
        except Exception as error:  # PeerFailed, PeerUnavailable, the database, a read model behind
            # Parked at the last delivery JetStream makes, whatever the cause: past it the
            # event would sit unacknowledged and never be delivered again.
            if attempt >= self._max_deliver:
                await self._park(msg, f"gave up after {attempt} attempts: {error!r}", attempt)
            elif isinstance(error, PeerUnavailable):  # the breaker is open: come back when it half-opens
                wait = (error.retry_at - datetime.now(UTC)).total_seconds() if error.retry_at else 5.0
                await msg.nak(delay=max(1.0, wait))
            else:
                log.warning("treasury reaction failed; retrying", subject=msg.subject, attempt=attempt,
                            error=repr(error))
                await msg.nak(delay=backoff(attempt))
        else:
            await msg.ack()

    async def _park(self, msg: Any, reason: str, attempts: int) -> None:
        await park(self._js, self._dead_letters, DURABLE, self._stream, msg, reason, attempts)
        self.parked += 1

    async def _react(self, msg: Any) -> None:
        event = env.decode(msg.data, PAYLOADS_BY_SUBJECT[msg.subject])
        if msg.subject in NOTIFIED_SUBJECTS:
            await self._notify(msg, event)
        if msg.subject in INVENTORY_SUBJECTS:
            await self._receive_stock(msg, event)
        if msg.subject not in TREASURY_SUBJECTS:
            return
        config = await self._config(event.tenant_id, "treasury")
        if config is None:
            self.skipped += 1
            return
        treasury = Treasury(self._transport.peer(config))
        event_id, data = str(event.event_id), event.data
        payload: Any = data  # the subject says which of the three payloads it is
        tenant, correlation = event.tenant_id, header(msg, env.CORRELATION_ID)
        ctx = CommandContext(
            tenant_id=tenant,
            metadata=EventMetadata(tenant, correlation or event_id, event_id, actor="service:treasury"),
            idempotency=IdempotencyKey.of(f"{INBOUND_KEY_PREFIX}reaction:{event_id}", "REACTION",
                                          msg.subject, msg.data),
        )
        self.called += 1
        try:
            match msg.subject:
                case "erp.opportunity.won":
                    terms = await asyncio.to_thread(Loader(self._runner.store, tenant).settings)
                    due = business_date(event.timestamp) + timedelta(days=terms.payment_terms_days)
                    invoice = await treasury.create_invoice(tenant, InvoiceRequest(
                        customer_id=payload.customer_id, opportunity_id=payload.opportunity_id,
                        amount=payload.amount, currency=payload.currency, due_date=due),
                        idempotency_key=idempotency_key(event_id, "treasury.invoice"),
                        correlation_id=correlation)
                    await crm.link_invoice(self._runner, ctx, payload.opportunity_id, invoice.invoice_id,
                                           invoice.status or "draft")
                case "erp.purchase_order.received":
                    bill = await treasury.create_bill(tenant, BillRequest(
                        purchase_order_id=payload.purchase_order_id, vendor_id=payload.vendor_id,
                        total_amount=payload.total_amount, currency=payload.currency),
                        idempotency_key=idempotency_key(event_id, "treasury.bill"),
                        correlation_id=correlation)
                    await procurement.link_bill(self._runner, ctx, payload.purchase_order_id, bill.bill_id,
                                                bill.status or "open")
                case "erp.payroll.processed":
                    position = int(header(msg, env.LOG_POSITION) or 0)
                    payees = await self._payees(tenant, payload.payroll_id, position)
                    payment = await treasury.pay_payroll(tenant, PayrollPaymentRequest(
                        payroll_id=payload.payroll_id, period=payload.period, amount=payload.total_amount,
                        currency="KES", payees=payees),
                        idempotency_key=idempotency_key(event_id, "treasury.payroll_payment"),
                        correlation_id=correlation)
                    if payment.status in ("processed", "paid"):  # else treasury.payment.processed follows
                        await hrm.mark_paid(self._runner, ctx, payload.payroll_id, payment.payment_id)
        except NothingChanged:
            pass

    async def _payees(self, tenant: str, payroll_id: Any, position: int) -> list[PayeeLine]:
        await self._positions.wait("payroll", position, 30.0)  # the run's payslips are in the read model
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT employee_id, net_pay FROM payslips WHERE tenant_id = %s "
                                     "AND payroll_id = %s ORDER BY employee_id", (tenant, payroll_id))
            return [PayeeLine(employee_id=str(e), amount=amount) for e, amount in await cur.fetchall()]

    async def _receive_stock(self, msg: Any, event: env.Envelope[Any]) -> None:
        """Goods received on a purchase order go into the tenant's receiving warehouse
        (tier 2 business terms): one movement per accepted line."""
        config = await self._config(event.tenant_id, "inventory")
        if config is None:
            return
        settings = await asyncio.to_thread(Loader(self._runner.store, event.tenant_id).settings)
        if settings.receiving_warehouse_id is None:
            raise Park("inventory is configured over REST but no receiving warehouse is set "
                       "(POST /api/v1/settings/business-terms)")
        inventory = Inventory(self._transport.peer(config))
        receipt = event.data
        for line in receipt.lines:
            if line.accepted_quantity <= 0:
                continue
            await inventory.record_movement(event.tenant_id, StockMovementRequest(
                item_id=line.item_id, warehouse_id=settings.receiving_warehouse_id,
                quantity=line.accepted_quantity, direction="in", reason="purchase_receipt",
                reference=f"{receipt.purchase_order_id}/{receipt.receipt_id}"),
                idempotency_key=idempotency_key(event.event_id, f"inventory.receipt.{line.line_no}"),
                correlation_id=header(msg, env.CORRELATION_ID))

    async def _notify(self, msg: Any, event: env.Envelope[Any]) -> None:
        """The tenant's notification preferences (tier 2) say which events go out on which
        channels; the notifications service knows the recipients and templates."""
        config = await self._config(event.tenant_id, "notifications")
        if config is None:
            return
        name = msg.subject.removeprefix("erp.")
        settings = await asyncio.to_thread(Loader(self._runner.store, event.tenant_id).settings)
        notifications = Notifications(self._transport.peer(config))
        facts = {k: str(v) for k, v in msgspec.structs.asdict(event.data).items()
                 if isinstance(v, str | int | Decimal | UUID)}
        for chosen in settings.notifications.get(name, []):
            channel: Any = chosen  # one of the tenant settings' channels (validated there)
            await notifications.send_message(
                event.tenant_id, MessageRequest(channel=channel, recipients=[], template=name,
                                                data={"event_id": str(event.event_id), **facts}),
                idempotency_key=idempotency_key(event.event_id, f"notifications.{channel}"),
                correlation_id=header(msg, env.CORRELATION_ID))

    async def _config(self, tenant: str, peer: str) -> PeerConfig | None:
        """A tenant's REST configuration of `peer`: tier-1 `peer.<peer>.url` and `.credential`."""
        cached = self._configs.get((tenant, peer))
        if cached is not None and time.monotonic() - cached[0] < CONFIG_CACHE_SECONDS:
            return cached[1]
        found: PeerConfig | None = None
        if self._keyring is not None:
            async with self._pool.connection() as conn:
                try:
                    url = await credentials.reveal(conn, self._keyring, tenant, f"peer.{peer}.url")
                    secret = await credentials.reveal(conn, self._keyring, tenant, f"peer.{peer}.credential")
                    # named by where it is: tenants on one treasury share its breaker, and one
                    # tenant's unreachable treasury does not stop the calls to the others'
                    found = PeerConfig(name=f"{peer}@{httpx.URL(url).netloc.decode()}", base_url=url,
                                       credential=secret)
                except credentials.CredentialNotFound:
                    found = None
        self._configs[(tenant, peer)] = (time.monotonic(), found)
        return found
