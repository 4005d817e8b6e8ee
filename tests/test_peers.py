"""Outbound calls to the platform's services, against real HTTP servers standing in for them.

Each stub peer is a `ThreadingHTTPServer` on a free loopback port that answers from a
script (2xx, 4xx, 5xx, 429 with Retry-After, or hanging) and records every request. The
policy gets a fake clock and a `sleep` that only records, so backoffs and the breaker's
60 s need no waiting; the HTTP is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from uuid import UUID, uuid4

import httpx
import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from integrations.inventory import (
    ItemStock,
    StockAdjustment,
    StockAdjustmentRequest,
    StockMovement,
    StockMovementRequest,
    Warehouse,
    WarehouseStock,
)
from integrations.iot import Reading, Telemetry
from integrations.logistics import Address, Shipment, ShipmentItem, ShipmentRequest, Tracking, TrackingEvent
from integrations.notifications import Message, MessageRequest
from integrations.peers import Peers
from integrations.policy import (
    CircuitState,
    MissingIdempotencyKey,
    PeerFailed,
    PeerRefused,
    PeerResponseInvalid,
    PeerUnavailable,
    Policy,
    Resilience,
    idempotency_key,
    retry_after_seconds,
)
from integrations.pos import PosOrder, PosOrderLine, PosOrderRequest, Product
from integrations.projects import ProjectBudget, ProjectExpense, ProjectExpenseRequest
from integrations.transport import PeerConfig
from integrations.treasury import (
    BankAccount,
    Bill,
    BillRequest,
    Expense,
    ExpenseRequest,
    Invoice,
    InvoiceLine,
    InvoiceRequest,
    PayeeLine,
    Payment,
    PayrollPaymentRequest,
    TaxCode,
)

TENANT = "tenant-a"
CORRELATION = "corr-7f3a"
EVENT_ID = UUID("5b0c6d5e-8a43-4c1e-9d7b-0e2f3a4b5c6d")
KEY = idempotency_key(EVENT_ID, "test.call")

# Test fixture credentials: both kinds of header the peers may ask for.
CREDENTIALS = {
    "treasury": ("Authorization", "Bearer treasury-test-token"),
    "inventory": ("X-API-Key", "inventory-test-key"),
    "logistics": ("Authorization", "Bearer logistics-test-token"),
    "pos": ("X-API-Key", "pos-test-key"),
    "iot": ("X-API-Key", "iot-test-key"),
    "projects": ("Authorization", "Bearer projects-test-token"),
    "notifications": ("X-API-Key", "notifications-test-key"),
}


# The stand-in peers -------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stub: StubPeer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stub = stub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        stub = cast(_Server, self.server).stub
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = stub.record(Seen(self.command, path, query, headers, body))
        if answer.hang_seconds:
            stub.released.wait(answer.hang_seconds)
        with contextlib.suppress(OSError):  # the client gave up waiting: nobody to answer
            self.send_response(answer.status)
            for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubPeer:
    """A real HTTP server standing in for a platform service: answers its script in
    order, then `default`, and records every request."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.default = Answer()
        self.released = threading.Event()  # ends every hang at teardown
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self._server.server_address[:2])
        return f"http://{host}:{port}"

    def answer(self, *answers: Answer) -> None:
        self._script.extend(answers)

    def record(self, seen: Seen) -> Answer:
        with self._lock:
            self.seen.append(seen)
            return self._script.popleft() if self._script else self.default

    def __enter__(self) -> StubPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stub() -> Iterator[StubPeer]:
    with StubPeer() as peer:
        yield peer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    peers: Peers
    clock: FakeClock
    sleeps: list[float]
    registry: CollectorRegistry


@contextlib.asynccontextmanager
async def rig(base_url: str, limits: Resilience | None = None,
              jitter: Callable[[], float] = random.random) -> AsyncIterator[Rig]:
    """Every peer at `base_url`, under a policy with a fake clock and a recording sleep."""
    clock, sleeps, registry = FakeClock(), list[float](), CollectorRegistry()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    policy = Policy(limits, registry=registry, clock=clock, sleep=sleep, jitter=jitter)
    configs = [PeerConfig(name=name, base_url=base_url, credential=value, credential_header=header)
               for name, (header, value) in CREDENTIALS.items()]
    async with Peers(configs, policy) as peers:
        yield Rig(peers, clock, sleeps, registry)


NO_RETRIES = Resilience(max_retries=0)


def accounts(peers: Peers) -> Awaitable[list[BankAccount]]:
    return peers.treasury.bank_accounts(TENANT)


async def open_the_breaker(stub: StubPeer, r: Rig) -> None:
    stub.answer(*[Answer(status=503)] * 5)
    for _ in range(4):
        with pytest.raises(PeerFailed):
            await accounts(r.peers)
    with pytest.raises(PeerUnavailable):
        await accounts(r.peers)


# Circuit breaker ------------------------------------------------------------------------

async def test_breaker_opens_after_five_failures_then_refuses_without_calling(stub: StubPeer) -> None:
    async with rig(stub.url, NO_RETRIES) as r:
        await open_the_breaker(stub, r)
        with pytest.raises(PeerUnavailable) as refused:
            await accounts(r.peers)
    assert len(stub.seen) == 5
    message = str(refused.value)
    assert "treasury" in message and "5 consecutive failures" in message and "next try after" in message
    assert refused.value.retry_at is not None
    expected = datetime.now(UTC) + timedelta(seconds=60)
    assert abs((refused.value.retry_at - expected).total_seconds()) < 2


async def test_failed_attempts_of_a_retried_call_count_towards_the_breaker(stub: StubPeer) -> None:
    stub.default = Answer(status=502)
    async with rig(stub.url) as r:
        with pytest.raises(PeerFailed) as failed:
            await accounts(r.peers)  # 4 attempts
        assert failed.value.attempts == 4
        with pytest.raises(PeerUnavailable):
            await accounts(r.peers)  # the 5th failed request opens it: no more retries
        with pytest.raises(PeerUnavailable):
            await accounts(r.peers)
    assert len(stub.seen) == 5


async def test_breaker_half_opens_after_sixty_seconds_and_a_good_trial_closes_it(stub: StubPeer) -> None:
    async with rig(stub.url, NO_RETRIES) as r:
        await open_the_breaker(stub, r)
        r.clock.advance(59.9)
        with pytest.raises(PeerUnavailable):
            await accounts(r.peers)
        assert len(stub.seen) == 5
        r.clock.advance(0.1)
        stub.answer(Answer(body=b"[]"), Answer(body=b"[]"))
        assert await accounts(r.peers) == []
        health = r.peers.policy.breaker("treasury").health()
        assert (health.state, health.consecutive_failures) == (CircuitState.CLOSED, 0)
        assert await accounts(r.peers) == []
    assert len(stub.seen) == 7


async def test_a_failed_trial_opens_the_breaker_again_without_retrying(stub: StubPeer) -> None:
    async with rig(stub.url, jitter=lambda: 1.0) as r:
        stub.answer(*[Answer(status=503)] * 5)
        with pytest.raises(PeerFailed):
            await accounts(r.peers)
        with pytest.raises(PeerUnavailable):
            await accounts(r.peers)
        r.clock.advance(60)
        stub.answer(Answer(status=500))
        with pytest.raises(PeerUnavailable, match="500 Internal Server Error"):
            await accounts(r.peers)
        with pytest.raises(PeerUnavailable):
            await accounts(r.peers)
        assert r.peers.policy.breaker("treasury").state is CircuitState.OPEN
    assert len(stub.seen) == 6
    assert r.sleeps == [1.0, 2.0, 4.0]  # the first call's retries only


async def test_only_one_trial_call_goes_while_half_open(stub: StubPeer) -> None:
    async with rig(stub.url, NO_RETRIES) as r:
        await open_the_breaker(stub, r)
        r.clock.advance(60)
        stub.answer(Answer(body=b"[]", hang_seconds=0.3))
        trial, other = await asyncio.gather(accounts(r.peers), accounts(r.peers), return_exceptions=True)
        assert trial == []
        assert isinstance(other, PeerUnavailable) and "trial" in str(other)
    assert len(stub.seen) == 6


# Retries --------------------------------------------------------------------------------

async def test_retries_back_off_1_2_4_seconds_with_equal_jitter(stub: StubPeer) -> None:
    stub.default = Answer(status=503)
    async with rig(stub.url) as r:
        with pytest.raises(PeerFailed) as failed:
            await accounts(r.peers)
    assert len(stub.seen) == 4 and failed.value.status == 503
    assert len(r.sleeps) == 3
    for delay, step in zip(r.sleeps, (1, 2, 4), strict=True):
        assert step / 2 <= delay <= step


@pytest.mark.parametrize(("jitter", "delays"), [(0.0, [0.5, 1.0, 2.0]), (1.0, [1.0, 2.0, 4.0])])
async def test_jitter_keeps_half_of_each_step(stub: StubPeer, jitter: float, delays: list[float]) -> None:
    stub.default = Answer(status=500)
    async with rig(stub.url, jitter=lambda: jitter) as r:
        with pytest.raises(PeerFailed):
            await accounts(r.peers)
    assert r.sleeps == delays


def test_backoff_never_waits_more_than_thirty_seconds() -> None:
    limits = Resilience()
    assert limits.backoff_seconds(5, 1.0) == 30.0
    assert limits.backoff_seconds(20, 0.0) == 15.0


async def test_a_retried_call_that_then_succeeds_answers_normally(stub: StubPeer) -> None:
    stub.answer(Answer(status=503), Answer(status=502), Answer(body=b'[{"account_id":"a","name":"Ops",'
                                                                  b'"currency":"KES"}]'))
    async with rig(stub.url, jitter=lambda: 1.0) as r:
        assert await accounts(r.peers) == [BankAccount(account_id="a", name="Ops", currency="KES")]
    assert r.sleeps == [1.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_a_refusal_is_not_retried(stub: StubPeer, status: int) -> None:
    problem = {"type": "about:blank", "title": "Refused", "detail": "currency: unknown code XYZ"}
    stub.answer(Answer(status=status, body=msgspec.json.encode(problem),
                       headers={"Content-Type": "application/problem+json"}))
    async with rig(stub.url) as r:
        with pytest.raises(PeerRefused) as refused:
            await accounts(r.peers)
        breaker = r.peers.policy.breaker("treasury")
        assert (breaker.state, breaker.consecutive_failures) == (CircuitState.CLOSED, 0)
    assert (refused.value.status, refused.value.problem) == (status, problem)
    assert "unknown code XYZ" in str(refused.value)
    assert len(stub.seen) == 1 and r.sleeps == []


@pytest.mark.parametrize(("status", "retry_after", "waited"),
                         [(429, "7", 7.0), (429, "120", 30.0), (503, "3", 3.0)])
async def test_retry_after_is_obeyed_up_to_thirty_seconds(stub: StubPeer, status: int, retry_after: str,
                                                          waited: float) -> None:
    stub.answer(Answer(status=status, headers={"Retry-After": retry_after}), Answer(body=b"[]"))
    async with rig(stub.url) as r:
        assert await accounts(r.peers) == []
    assert r.sleeps == [waited] and len(stub.seen) == 2


def test_retry_after_may_be_an_http_date() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=12), usegmt=True), now) == 12.0
    assert retry_after_seconds("soon", now) is None


async def test_rate_limiting_never_opens_the_breaker(stub: StubPeer) -> None:
    stub.default = Answer(status=429)
    async with rig(stub.url, NO_RETRIES) as r:
        for _ in range(6):
            with pytest.raises(PeerFailed) as failed:
                await accounts(r.peers)
            assert failed.value.status == 429
        assert r.peers.policy.breaker("treasury").state is CircuitState.CLOSED
    assert len(stub.seen) == 6


async def test_a_hanging_peer_times_out(stub: StubPeer) -> None:
    stub.default = Answer(hang_seconds=5.0)
    async with rig(stub.url, Resilience(timeout_seconds=0.3, max_retries=1)) as r:
        started = time.perf_counter()
        with pytest.raises(PeerFailed) as failed:
            await accounts(r.peers)
        elapsed = time.perf_counter() - started
        health = r.peers.policy.breaker("treasury").health()
        timeouts = r.registry.get_sample_value("erp_peer_requests_total", {
            "peer": "treasury", "operation": "bank_accounts", "result": "timeout"})
    assert isinstance(failed.value.cause, TimeoutError | httpx.TimeoutException)
    assert len(stub.seen) == 2 and 0.6 <= elapsed < 2.5  # not the 5 s the peer hangs
    assert health.last_error == "timed out" and health.consecutive_failures == 2
    assert timeouts == 2


async def test_an_unreachable_peer_is_retried_then_fails() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with rig(f"http://127.0.0.1:{port}") as r:
        with pytest.raises(PeerFailed) as failed:
            await accounts(r.peers)
    assert isinstance(failed.value.cause, httpx.ConnectError)
    assert failed.value.attempts == 4 and len(r.sleeps) == 3


# Idempotency ----------------------------------------------------------------------------

INVOICE = InvoiceRequest(customer_id="cust-1", opportunity_id=UUID("0b3f2d9e-3d5c-4f37-9a0e-1c2b3d4e5f60"),
                         amount=Decimal("250000.00"), currency="KES", due_date=date(2026, 12, 31),
                         lines=[InvoiceLine(description="Fleet tracking", quantity=Decimal("1"),
                                            unit_price=Decimal("250000.00"), tax_code="VAT16")])


async def test_a_retry_and_a_redelivery_send_the_same_idempotency_key(stub: StubPeer) -> None:
    invoice_answer = Answer(status=201, body=b'{"invoice_id":"inv-1"}')
    stub.answer(Answer(status=503), invoice_answer, invoice_answer)
    event_id = uuid4()
    async with rig(stub.url) as r:
        for _delivery in range(2):  # the event, then its redelivery
            key = idempotency_key(event_id, "treasury.create_invoice")
            invoice = await r.peers.treasury.create_invoice(TENANT, INVOICE, idempotency_key=key)
            assert invoice.invoice_id == "inv-1"
    keys = {seen.headers["idempotency-key"] for seen in stub.seen}
    assert len(stub.seen) == 3 and keys == {key}


def test_idempotency_keys_differ_by_event_and_action_only() -> None:
    event_id = uuid4()
    key = idempotency_key(event_id, "treasury.create_invoice")
    assert key == idempotency_key(str(event_id).upper(), "treasury.create_invoice")
    assert UUID(key).version == 5
    assert key != idempotency_key(uuid4(), "treasury.create_invoice")
    assert key != idempotency_key(event_id, "notifications.send_message")


@pytest.mark.parametrize("key", [None, "", "  "])
async def test_a_mutation_without_idempotency_key_is_not_sent(stub: StubPeer, key: str | None) -> None:
    async with rig(stub.url) as r:
        peer = r.peers.treasury.peer
        with pytest.raises(MissingIdempotencyKey):
            await peer.send("POST", "create_invoice", f"{stub.url}/api/v1/treasury/invoices",
                            lambda response: response, tenant_id=TENANT, idempotency_key=key, body=b"{}")
    assert stub.seen == []


# The contract, peer by peer ---------------------------------------------------------------

@dataclass(frozen=True)
class Contract:
    peer: str
    method: str
    path: str
    call: Callable[[Peers], Awaitable[object]]
    sent: msgspec.Struct | None  # what a mutation sends
    answer: bytes  # a typical answer, with fields we do not read
    expected: object  # what the answer decodes to
    query: str = ""


BILL = BillRequest(purchase_order_id=UUID("7d1c0e55-0a3b-4b8e-8f0c-5e6d7c8b9a01"), vendor_id="vendor-9",
                   total_amount=Decimal("5000.00"), currency="KES", reference="PO-2026-000042")
PAYMENT = PayrollPaymentRequest(
    payroll_id=UUID("c2a1b3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"), period="2026-11", amount=Decimal("50000.00"),
    currency="KES", payees=[PayeeLine(employee_id="emp-1", amount=Decimal("30000.00")),
                            PayeeLine(employee_id="emp-2", amount=Decimal("20000.00"))])
EXPENSE = ExpenseRequest(expense_claim_id=UUID("d3b2c4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"), employee_id="emp-1",
                         category="travel", amount=Decimal("1250.50"), currency="KES",
                         incurred_on=date(2026, 11, 20), description="Matatu fares, Nakuru site visit")
MOVEMENT = StockMovementRequest(item_id="item-7", warehouse_id="wh-1", quantity=Decimal("12"), direction="in",
                                reason="purchase_receipt", reference="PO-2026-000042",
                                unit_cost=Decimal("410.00"))
ADJUSTMENT = StockAdjustmentRequest(item_id="item-7", warehouse_id="wh-1", quantity_change=Decimal("-2"),
                                    reason="scrap", reference="WO-17")
SHIPMENT = ShipmentRequest(
    order_id=UUID("e4c3d5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"),
    deliver_to=Address(recipient="Achieng Otieno", phone="+254700000001", line1="Moi Avenue 12",
                       city="Nairobi", county="Nairobi"),
    items=[ShipmentItem(item_id="item-7", quantity=Decimal("2"))])
POS_ORDER = PosOrderRequest(order_reference="SO-2026-000311", lines=[
    PosOrderLine(product_id="prod-1", quantity=Decimal("2"), unit_price=Decimal("150.00"))],
    total_amount=Decimal("300.00"), currency="KES", outlet_id="outlet-westlands")
PROJECT_EXPENSE = ProjectExpenseRequest(
    expense_claim_id=UUID("f5d4e6a7-b8c9-4d0e-9f1a-2b3c4d5e6f70"), category="materials",
    amount=Decimal("8000.00"), currency="KES", incurred_on=date(2026, 11, 21), employee_id="emp-3")
MESSAGE = MessageRequest(channel="email", recipients=["user-1"], template="payroll.payslip_ready",
                         data={"period": "2026-11"})
SINCE = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

CONTRACT = [
    Contract("treasury", "POST", "/api/v1/treasury/invoices",
             lambda p: p.treasury.create_invoice(TENANT, INVOICE, idempotency_key=KEY,
                                                 correlation_id=CORRELATION),
             INVOICE,
             b'{"invoice_id":"inv-1","status":"draft","number":"INV-0001"}',
             Invoice(invoice_id="inv-1", status="draft")),
    Contract("treasury", "POST", "/api/v1/treasury/bills",
             lambda p: p.treasury.create_bill(TENANT, BILL, idempotency_key=KEY, correlation_id=CORRELATION),
             BILL, b'{"bill_id":"bill-1","status":"open"}', Bill(bill_id="bill-1", status="open")),
    Contract("treasury", "POST", "/api/v1/treasury/payments",
             lambda p: p.treasury.pay_payroll(TENANT, PAYMENT, idempotency_key=KEY,
                                              correlation_id=CORRELATION),
             PAYMENT, b'{"payment_id":"pay-1","status":"processing","batch":3}',
             Payment(payment_id="pay-1", status="processing")),
    Contract("treasury", "POST", "/api/v1/treasury/expenses",
             lambda p: p.treasury.record_expense(TENANT, EXPENSE, idempotency_key=KEY,
                                                 correlation_id=CORRELATION),
             EXPENSE, b'{"expense_id":"exp-1"}', Expense(expense_id="exp-1")),
    Contract("treasury", "GET", "/api/v1/treasury/accounts",
             lambda p: p.treasury.bank_accounts(TENANT, correlation_id=CORRELATION), None,
             b'[{"account_id":"acc-1","name":"Operations","currency":"KES","bank":"KCB","balance":10}]',
             [BankAccount(account_id="acc-1", name="Operations", currency="KES", bank="KCB")]),
    Contract("treasury", "GET", "/api/v1/treasury/tax-codes",
             lambda p: p.treasury.tax_codes(TENANT, correlation_id=CORRELATION), None,
             b'{"count":1,"next":null,"previous":null,"results":[{"code":"VAT16","rate":16,"name":"VAT"}]}',
             [TaxCode(code="VAT16", rate=Decimal("16"), name="VAT")]),
    Contract("inventory", "GET", "/api/v1/inventory/items/item-7/stock",
             lambda p: p.inventory.stock(TENANT, "item-7", warehouse_id="wh-1", correlation_id=CORRELATION),
             None, b'{"item_id":"item-7","stock_level":100,"warehouses":[{"warehouse_id":"wh-1",'
                   b'"stock_level":100,"bin":"A3"}]}',
             ItemStock(item_id="item-7", stock_level=Decimal("100"),
                       warehouses=[WarehouseStock(warehouse_id="wh-1", stock_level=Decimal("100"))]),
             query="warehouse_id=wh-1"),
    Contract("inventory", "POST", "/api/v1/inventory/movements",
             lambda p: p.inventory.record_movement(TENANT, MOVEMENT, idempotency_key=KEY,
                                                   correlation_id=CORRELATION),
             MOVEMENT, b'{"movement_id":"mv-1","status":"recorded"}',
             StockMovement(movement_id="mv-1", status="recorded")),
    Contract("inventory", "POST", "/api/v1/inventory/adjustments",
             lambda p: p.inventory.record_adjustment(TENANT, ADJUSTMENT, idempotency_key=KEY,
                                                     correlation_id=CORRELATION),
             ADJUSTMENT, b'{"adjustment_id":"adj-1"}', StockAdjustment(adjustment_id="adj-1")),
    Contract("inventory", "GET", "/api/v1/inventory/warehouses",
             lambda p: p.inventory.warehouses(TENANT, correlation_id=CORRELATION), None,
             b'[{"warehouse_id":"wh-1","name":"Mombasa Road","code":"MSA"}]',
             [Warehouse(warehouse_id="wh-1", name="Mombasa Road", code="MSA")]),
    Contract("logistics", "POST", "/api/v1/logistics/shipments",
             lambda p: p.logistics.create_shipment(TENANT, SHIPMENT, idempotency_key=KEY,
                                                   correlation_id=CORRELATION),
             SHIPMENT, b'{"shipment_id":"shp-1","status":"pending","tracking_number":"KE123"}',
             Shipment(shipment_id="shp-1", status="pending", tracking_number="KE123")),
    Contract("logistics", "GET", "/api/v1/logistics/shipments/shp-1/tracking",
             lambda p: p.logistics.tracking(TENANT, "shp-1", correlation_id=CORRELATION), None,
             b'{"shipment_id":"shp-1","status":"in_transit","events":[{"status":"picked_up",'
             b'"at":"2026-11-25T10:00:00Z","location":"Nairobi"}]}',
             Tracking(shipment_id="shp-1", status="in_transit",
                      events=[TrackingEvent(status="picked_up", at=AT, location="Nairobi")])),
    Contract("pos", "GET", "/api/v1/pos/products",
             lambda p: p.pos.products(TENANT, correlation_id=CORRELATION), None,
             b'[{"product_id":"prod-1","name":"Chapati","price":150.00,"currency":"KES","stock":4}]',
             [Product(product_id="prod-1", name="Chapati", price=Decimal("150.00"), currency="KES")]),
    Contract("pos", "POST", "/api/v1/pos/orders",
             lambda p: p.pos.create_order(TENANT, POS_ORDER, idempotency_key=KEY, correlation_id=CORRELATION),
             POS_ORDER, b'{"order_id":"pos-1","status":"open"}', PosOrder(order_id="pos-1", status="open")),
    Contract("iot", "GET", "/api/v1/iot/devices/dev-3/telemetry",
             lambda p: p.iot.telemetry(TENANT, "dev-3", since=SINCE, metric="temperature",
                                       correlation_id=CORRELATION), None,
             b'{"device_id":"dev-3","readings":[{"metric":"temperature","value":4.5,"unit":"C",'
             b'"at":"2026-11-25T10:00:00Z"}]}',
             Telemetry(device_id="dev-3",
                       readings=[Reading(metric="temperature", value=4.5, unit="C", at=AT)]),
             query="since=2026-11-25T09%3A00%3A00%2B00%3A00&metric=temperature"),
    Contract("projects", "POST", "/api/v1/projects/proj-5/expenses",
             lambda p: p.projects.record_expense(TENANT, "proj-5", PROJECT_EXPENSE, idempotency_key=KEY,
                                                 correlation_id=CORRELATION),
             PROJECT_EXPENSE, b'{"expense_id":"pexp-1"}', ProjectExpense(expense_id="pexp-1")),
    Contract("projects", "GET", "/api/v1/projects/proj-5/budget",
             lambda p: p.projects.budget(TENANT, "proj-5", correlation_id=CORRELATION), None,
             b'{"project_id":"proj-5","budget":100000.00,"spent":8000.00,"currency":"KES"}',
             ProjectBudget(project_id="proj-5", budget=Decimal("100000.00"), spent=Decimal("8000.00"),
                           currency="KES")),
    Contract("notifications", "POST", "/api/v1/notifications/messages",
             lambda p: p.notifications.send_message(TENANT, MESSAGE, idempotency_key=KEY,
                                                    correlation_id=CORRELATION),
             MESSAGE, b'{"message_id":"msg-1","status":"queued"}',
             Message(message_id="msg-1", status="queued")),
]


def test_the_contract_table_covers_every_rest_call_of_the_guide() -> None:
    listed = {(case.method, case.path.split("/")[3]) for case in CONTRACT}
    assert len(CONTRACT) == 18 and {peer for _, peer in listed} == set(CREDENTIALS)


@pytest.mark.parametrize("case", CONTRACT, ids=lambda case: f"{case.method} {case.path}")
async def test_each_call_sends_what_the_contract_says(stub: StubPeer, case: Contract) -> None:
    stub.answer(Answer(status=200 if case.sent is None else 201, body=case.answer))
    async with rig(stub.url) as r:
        result = await case.call(r.peers)
    [seen] = stub.seen
    assert (seen.method, seen.path, seen.query) == (case.method, case.path, case.query)
    header, credential = CREDENTIALS[case.peer]
    assert seen.headers[header.lower()] == credential
    assert seen.headers["x-tenant-id"] == TENANT
    assert seen.headers["x-correlation-id"] == CORRELATION
    if case.sent is None:
        assert "idempotency-key" not in seen.headers and seen.body == b""
    else:
        assert seen.headers["idempotency-key"] == KEY
        assert seen.headers["content-type"] == "application/json"
        assert msgspec.json.decode(seen.body, type=type(case.sent)) == case.sent
    assert result == case.expected


async def test_money_travels_as_a_json_number(stub: StubPeer) -> None:
    stub.answer(Answer(status=201, body=b'{"bill_id":"bill-1"}'))
    async with rig(stub.url) as r:
        await r.peers.treasury.create_bill(TENANT, BILL, idempotency_key=KEY)
    assert b'"total_amount":5000.00,' in stub.seen[0].body


async def test_an_answer_without_the_id_we_need_is_unusable_and_not_retried(stub: StubPeer) -> None:
    stub.answer(Answer(status=201, body=b'{"status":"draft"}'))
    async with rig(stub.url) as r:
        with pytest.raises(PeerResponseInvalid, match="invoice_id"):
            await r.peers.treasury.create_invoice(TENANT, INVOICE, idempotency_key=KEY)
        invalid = r.registry.get_sample_value(
            "erp_peer_calls_total", {"peer": "treasury", "operation": "create_invoice", "outcome": "invalid"})
    assert len(stub.seen) == 1 and invalid == 1


async def test_pages_are_followed_but_only_on_the_peer(stub: StubPeer) -> None:
    page = b'{"results":[{"warehouse_id":"wh-%d","name":"W"}],"next":"%s"}'
    stub.answer(Answer(body=page % (1, f"{stub.url}/api/v1/inventory/warehouses?page=2".encode())),
                Answer(body=b'{"results":[{"warehouse_id":"wh-2","name":"W"}],"next":null}'),
                Answer(body=page % (1, b"http://elsewhere.example/api/v1/inventory/warehouses?page=2")))
    async with rig(stub.url) as r:
        found = await r.peers.inventory.warehouses(TENANT)
        assert [w.warehouse_id for w in found] == ["wh-1", "wh-2"]
        with pytest.raises(PeerResponseInvalid, match="is not on"):
            await r.peers.inventory.warehouses(TENANT)
    assert [seen.query for seen in stub.seen] == ["", "page=2", ""]


async def test_ids_cannot_leave_their_path_segment(stub: StubPeer) -> None:
    stub.answer(Answer(body=b'{"item_id":"x","stock_level":0}'))
    async with rig(stub.url) as r:
        await r.peers.inventory.stock(TENANT, "a/../../pos/products?x=1")
        with pytest.raises(ValueError, match="not an id"):
            await r.peers.inventory.stock(TENANT, "..")
    assert stub.seen[0].path == "/api/v1/inventory/items/a%2F..%2F..%2Fpos%2Fproducts%3Fx%3D1/stock"


@pytest.mark.parametrize("tenant", ["", "*", "a\r\nX-Injected: 1"])
async def test_a_call_needs_a_real_tenant(stub: StubPeer, tenant: str) -> None:
    async with rig(stub.url) as r:
        with pytest.raises(ValueError, match="not a tenant id"):
            await r.peers.treasury.bank_accounts(tenant)
    assert stub.seen == []


def test_a_credential_never_shows_in_a_peer_config() -> None:
    config = PeerConfig(name="treasury", base_url="https://treasury.internal", credential="Bearer s3cret")
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError, match="base_url"):
        PeerConfig(name="treasury", base_url="treasury.internal", credential="Bearer s3cret")


# Observability --------------------------------------------------------------------------

async def test_metrics_and_health_report_each_peer(stub: StubPeer) -> None:
    stub.answer(Answer(body=b"[]"), Answer(status=500))
    async with rig(stub.url, NO_RETRIES) as r:
        await accounts(r.peers)
        with pytest.raises(PeerFailed):
            await accounts(r.peers)
        labels = {"peer": "treasury", "operation": "bank_accounts"}

        def sample(name: str, **extra: str) -> float | None:
            return r.registry.get_sample_value(name, {**labels, **extra})

        assert sample("erp_peer_request_duration_seconds_count") == 2
        assert sample("erp_peer_calls_total", outcome="success") == 1
        assert sample("erp_peer_calls_total", outcome="failed") == 1
        assert sample("erp_peer_requests_total", result="server_error") == 1
        health = {h.peer: h for h in r.peers.health()}
        assert set(health) == set(CREDENTIALS)
        treasury = health["treasury"]
        assert (treasury.state, treasury.consecutive_failures) == (CircuitState.CLOSED, 1)
        assert treasury.last_error == "500 Internal Server Error"
        assert treasury.last_success_at is not None and treasury.retry_at is None

        stub.answer(*[Answer(status=503)] * 4)
        for _ in range(4):
            with contextlib.suppress(PeerFailed, PeerUnavailable):
                await accounts(r.peers)
        opened = r.peers.policy.breaker("treasury").health()
        assert opened.state is CircuitState.OPEN and opened.retry_at is not None
        assert r.registry.get_sample_value("erp_peer_circuit_state", {"peer": "treasury"}) == 2
        assert r.registry.get_sample_value("erp_peer_circuit_state", {"peer": "pos"}) == 0
        assert r.registry.get_sample_value("erp_peer_consecutive_failures", {"peer": "treasury"}) == 5
        exposition = generate_latest(r.registry).decode()
    assert 'erp_peer_request_duration_seconds_bucket{le="0.1",operation="bank_accounts",peer="treasury"}' \
        in exposition
