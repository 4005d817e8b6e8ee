"""7. Fuzzing: requests generated from the API's own /openapi.json by schemathesis never get a
5xx and always get a documented answer; garbage given to event decoding is refused with
the decoder's documented errors only."""

from __future__ import annotations

import asyncio
import json
import string
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect as mi
import psycopg
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import response_schema_conformance

from aggregates.tenant_settings import valid_tenant_id
from api.app import create_app
from api.server import OneWriteProtocol
from erp import inbound
from erp.bootstrap import Endpoints, Service
from erp.commands import CommandContext
from erp.embedded import free_port
from streams import envelope as env
from streams.catalogue import PAYLOADS_BY_SUBJECT
from streams.inbound import InboundConsumer, Subscription, Unhandleable
from tests.conftest import as_user, eventually, register_tenants
from tests.conftest import settings as service_settings
from tests.reliability.conftest import Figures

POSITIVE_EXAMPLES = 9  # per operation: requests that fit the schema
NEGATIVE_EXAMPLES = 5  # per operation: requests that do not
NUL_EXAMPLES = 3  # per operation: fitting requests with a NUL character in one text
MINIMUM_CASES = 1_000


# 7a. The API, from its OpenAPI document ---------------------------------------------------


@dataclass
class FuzzReport:
    cases: int = 0
    nul_cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    operations: int = 0
    failures: list[str] = field(default_factory=list)
    unbreakable: list[str] = field(default_factory=list)  # operations no request can fail to fit
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int, *, nul: bool) -> None:
        with self.lock:
            self.cases += 1
            self.nul_cases += nul
            self.statuses[status] += 1


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, but for the documented 503 of a query whose `min_position` the read
    model has not reached within its wait (`Retry-After`, problem type read-model-behind)."""
    if response.status_code == 503 and response.headers.get("retry-after"):
        problem = json.loads(response.content)
        if problem.get("type") == "urn:erp:problem:read-model-behind":
            return None
    return not_a_server_error(ctx, response, case)


CHECKS: list[Any] = [no_server_error, response_schema_conformance]


def with_nul(case: Any) -> bool:
    """Puts a NUL character into the first text of the case's path, query or body (valid
    JSON, a valid URL, and text no PostgreSQL column can hold); answers whether there was any."""
    def into(container: Any) -> bool:
        items = list(container.items()) if isinstance(container, dict) else list(enumerate(container)) \
            if isinstance(container, list) else []
        for key, value in items:
            if isinstance(value, str):
                container[key] = value + "\x00"
                return True
            if isinstance(value, dict | list) and into(value):
                return True
        return False

    return any(into(c) for c in (case.path_parameters, case.query, case.body) if c)


PASSES = ((GenerationMode.POSITIVE, POSITIVE_EXAMPLES, False),
          (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, False),
          (GenerationMode.POSITIVE, NUL_EXAMPLES, True))


def fuzz(base_url: str, report: FuzzReport) -> None:
    """Every operation of the API with generated requests, signed in as a superuser of tenant-a."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    session = requests.Session()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            report.failures.append(f"an operation the document describes wrongly: {result.err()}")
            continue
        operation = result.ok()
        report.operations += 1
        for mode, examples, nul in PASSES:
            try:
                fuzz_operation(operation, mode, examples, nul, base_url, session, report)
            except Unsatisfiable:  # no request can break the schema (no parameters, no body)
                report.unbreakable.append(operation.label)
            except Exception as error:
                kind = "with a NUL character" if nul else mode
                report.failures.append(f"{operation.label} ({kind}): {error}"[:3000])


def fuzz_operation(operation: Any, mode: GenerationMode, examples: int, nul: bool, base_url: str,
                   session: requests.Session, report: FuzzReport) -> None:
    headers = as_user()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def each(case: Any) -> None:
        # A generated X-API-Key outranks the bearer token and a generated X-Tenant-ID is
        # malformed or names another tenant: 401 or 403 before any route runs. Nine in ten
        # requests do without them, so the routes themselves get the requests.
        if case.headers and report.cases % 10:
            case.headers.pop("X-API-Key", None)
            case.headers.pop("X-Tenant-ID", None)
        if nul and not with_nul(case):
            return
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        report.count(response.status_code, nul=nul)
        case.validate_response(response, checks=CHECKS)

    each()


async def test_generated_requests_get_no_server_error_and_documented_answers(
    endpoints: Endpoints, figures: Figures
) -> None:
    # A query waiting for a position that never comes answers its documented 503 sooner.
    service = Service(service_settings(read_wait_max_seconds=0.2), endpoints)
    await service.start()
    try:
        await register_tenants(service, "tenant-a", "tenant-b")
        server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=free_port(),
                                               lifespan="off", log_level="warning", access_log=False,
                                               http=OneWriteProtocol))  # as `erp serve`
        serving = asyncio.create_task(server.serve())
        report = FuzzReport()
        try:
            await eventually(lambda: _true(server.started), timeout=15)
            base_url = f"http://127.0.0.1:{server.config.port}"
            started = time.monotonic()
            await asyncio.to_thread(fuzz, base_url, report)
            seconds = time.monotonic() - started
        finally:
            server.should_exit = True
            await serving
        assert report.failures == [], "\n\n".join(report.failures)
        assert report.cases >= MINIMUM_CASES, report

        head = await read_models_caught_up(service)
    finally:
        await service.stop()
    figures.record(
        "7a. API fuzzing (schemathesis)",
        operations=report.operations,
        cases_run=f"{report.cases} ({POSITIVE_EXAMPLES} fitting and {NEGATIVE_EXAMPLES} not fitting the "
                  f"schema per operation at most, and {report.nul_cases} fitting ones with a NUL character "
                  "in a path, query or body text), signed in as a superuser of tenant-a",
        statuses=", ".join(f"{status}: {n}" for status, n in sorted(report.statuses.items())),
        operations_without_a_not_fitting_request=", ".join(report.unbreakable),
        checks="no 5xx (a 503 only as the documented read-model-behind answer), responses conform to "
               "the schema; afterwards every read model caught up with the event store",
        events_stored=head,
        seconds=round(seconds, 1),
    )


async def _true(value: bool) -> bool:
    return value


async def read_models_caught_up(service: Service) -> int:
    """Every event stored so far reached every read model (none stalls a projector) and every
    background task still runs; answers the event store's head."""
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT coalesce(max(notification_id), 0) FROM erp_events")
        row = await cur.fetchone()
        head = int(row[0]) if row else 0

    async def caught_up() -> bool:
        return all(p.log_position >= head for p in service.projectors)

    try:
        await eventually(caught_up, timeout=30)
    except AssertionError:
        behind = {p.projection.name: p.log_position for p in service.projectors if p.log_position < head}
        raise AssertionError(f"read models stuck behind the event store's {head}: {behind}") from None
    ended = [task.get_name() for task in service._tasks if task.done()]
    assert ended == [], f"background tasks ended: {ended}"
    return head


# 7b. Event decoding -----------------------------------------------------------------------

EXAMPLES = 400  # per property


def _inbound_subscriptions() -> list[Subscription]:
    """The subscriptions the service consumes, with their real payload types, each recording
    what it is handed instead of acting on it."""

    async def record(envelope: env.Envelope[Any], ctx: CommandContext) -> object:
        HANDED.append((envelope, ctx))
        return None

    real = inbound.subscriptions(None, None)  # type: ignore[arg-type]  # their handlers are replaced
    return [Subscription(s.subject, s.payload, record) for subs in real.values() for s in subs]


HANDED: list[tuple[env.Envelope[Any], CommandContext]] = []
SUBSCRIPTIONS = _inbound_subscriptions()
INBOUND_TYPES = {s.subject: s.payload for s in SUBSCRIPTIONS}
ALL_TYPES: dict[str, type[msgspec.Struct]] = {**PAYLOADS_BY_SUBJECT, **INBOUND_TYPES}

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(), st.text(alphabet=string.digits + ".-+eE", max_size=30),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "0.1", "-0", "2026-11-25", "2026-02-30",
                     "2026-11-25T10:30:00Z", "9999-12-31T23:59:59.999999+14:00", "0000-00-00T00:00:00",
                     str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000", "\x00", "\ud800",
                     "日本語 ✓ Zürich"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def plausible(kind: mi.Type) -> st.SearchStrategy[Any]:
    """JSON values of the wire type `kind`, edge cases included (huge numbers, odd text)."""
    strategy: st.SearchStrategy[Any]
    if isinstance(kind, mi.StrType):  # any text, or text some field wants (an email, a status)
        strategy = st.text(max_size=30) | st.emails() | st.sampled_from(["active", "suspended", "sent"])
    elif isinstance(kind, mi.BoolType):
        strategy = st.booleans()
    elif isinstance(kind, mi.IntType):
        strategy = st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    elif isinstance(kind, mi.FloatType | mi.DecimalType):
        strategy = st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False) \
            | st.decimals(allow_nan=True, places=None).map(str) | st.sampled_from(["1e400", "-1e-400"])
    elif isinstance(kind, mi.UUIDType):
        strategy = st.uuids().map(str)
    elif isinstance(kind, mi.DateTimeType):
        strategy = st.datetimes().map(lambda d: d.isoformat() + "Z") | st.datetimes().map(str)
    elif isinstance(kind, mi.NoneType):
        strategy = st.none()
    elif isinstance(kind, mi.UnionType):
        strategy = st.one_of(*(plausible(k) for k in kind.types))
    elif isinstance(kind, mi.ListType):
        strategy = st.lists(plausible(kind.item_type), max_size=3)
    elif isinstance(kind, mi.DictType):
        strategy = st.dictionaries(plausible(kind.key_type), plausible(kind.value_type), max_size=3)
    elif isinstance(kind, mi.StructType):
        strategy = st.fixed_dictionaries({f.encode_name: plausible(f.type) for f in kind.fields})
    else:
        strategy = json_values
    return strategy


FRESH_ID = "00000000-0000-4000-8000-000000000000"


TENANT_IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)  # beside any text, refused inbound


@st.composite
def envelopes(draw: st.DrawFn, subjects: list[str], tenant: str | None = None,
              corrupt: bool = True) -> tuple[str, bytes]:
    """A subject and a JSON envelope for it with plausible values of the right types (edge
    cases included). `corrupt`: now and then a value of another type or a missing field, extra
    fields, JSON cut short or with invalid UTF-8; else the event id is FRESH_ID, for the test
    to make unique (one reused with other content is refused, rightly, before its handler).
    `tenant`: always that tenant."""
    subject = draw(st.sampled_from(subjects))
    payload = mi.type_info(ALL_TYPES[subject])
    assert isinstance(payload, mi.StructType)

    def either(right: st.SearchStrategy[Any]) -> Any:
        return draw(json_values) if corrupt and draw(st.integers(0, 11)) == 0 else draw(right)

    def dropped() -> bool:
        return corrupt and draw(st.integers(0, 19)) == 0

    data = {f.encode_name: either(plausible(f.type)) for f in payload.fields if not dropped()}
    if corrupt:
        data.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    envelope: dict[str, Any] = {
        "event_id": either(st.uuids().map(str)) if corrupt else FRESH_ID,
        "event_type": either(st.sampled_from([subject, subject, subject.upper(), f"{subject}.x", ""])
                             if corrupt else st.just(subject)),
        "tenant_id": either(st.just(tenant) if tenant else TENANT_IDS | st.text(max_size=20)),
        "timestamp": either(plausible(mi.DateTimeType())),
        "data": draw(json_values) if dropped() else data,
    }
    for name in [name for name in envelope if dropped()]:
        del envelope[name]
    raw = json.dumps(envelope, ensure_ascii=draw(st.booleans()), allow_nan=True)
    encoded = raw.encode("utf-8", "surrogatepass")
    if corrupt and draw(st.integers(0, 9)) == 0:
        encoded = encoded[: draw(st.integers(0, len(encoded)))]
    return subject, encoded


DECODE_ERRORS = (msgspec.DecodeError,)  # msgspec.ValidationError is a DecodeError


def decodes_or_refuses(payload: bytes, data_type: type[msgspec.Struct]) -> env.Envelope[Any] | None:
    """env.decode's contract: an Envelope of `data_type`, or msgspec.DecodeError."""
    try:
        decoded = env.decode(payload, data_type)
    except DECODE_ERRORS:
        return None
    assert isinstance(decoded, env.Envelope) and isinstance(decoded.data, data_type)
    assert isinstance(decoded.event_id, uuid.UUID)
    # what decodes holds no NUL character: PostgreSQL could not store it
    assert b"\\u0000" not in msgspec.json.encode(msgspec.to_builtins(decoded))
    return decoded


def test_decoding_arbitrary_bytes_raises_only_decode_errors(figures: Figures) -> None:
    runs = Counter[str]()

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(payload=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
           subject=st.sampled_from(sorted(ALL_TYPES)))
    @example(payload=b'{"tenant_id": "\xed\xa0\x80"}', subject="treasury.invoice.created")  # bad UTF-8
    @example(payload=b'{"event_type": "\xff"}', subject="auth.user.created")
    def each(payload: bytes, subject: str) -> None:
        decoded = decodes_or_refuses(payload, ALL_TYPES[subject])
        runs["decoded" if decoded else "refused"] += 1

    each()
    assert sum(runs.values()) >= EXAMPLES
    figures.record("7b. Event decoding: arbitrary bytes", examples=sum(runs.values()),
                   outcomes=dict(runs), payload_types=len(ALL_TYPES),
                   raised_other_than_msgspec_DecodeError=0)


def test_decoding_nearly_right_envelopes_raises_only_decode_errors(figures: Figures) -> None:
    runs = Counter[str]()

    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=envelopes(sorted(ALL_TYPES)))
    def each(case: tuple[str, bytes]) -> None:
        subject, payload = case
        runs["decoded" if decodes_or_refuses(payload, ALL_TYPES[subject]) else "refused"] += 1

    each()
    assert runs["decoded"] > 0 and runs["refused"] > 0, runs  # both sides of the contract were tried
    figures.record("7b. Event decoding: nearly right JSON envelopes", examples=sum(runs.values()),
                   outcomes=dict(runs), raised_other_than_msgspec_DecodeError=0)


def test_the_inbound_consumer_refuses_malformed_events_as_unhandleable(figures: Figures) -> None:
    """InboundConsumer._handle: a message is handed to its subscription as a typed envelope
    with its command context, or refused with Unhandleable (parked at once); nothing else."""
    # a client never connected: deciding what a message is needs no NATS
    consumer = InboundConsumer(NATS().jetstream(), "TEST", "erp-test", SUBSCRIPTIONS, dead_letters="ERP_DLQ")
    runs = Counter[str]()
    loop = asyncio.new_event_loop()

    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=envelopes(sorted(INBOUND_TYPES)) | st.tuples(st.sampled_from(sorted(INBOUND_TYPES)),
                                                              st.binary(max_size=200)))
    def each(case: tuple[str, bytes]) -> None:
        subject, payload = case
        HANDED.clear()
        msg = Msg(_client=None, subject=subject, data=payload)  # type: ignore[arg-type]
        try:
            loop.run_until_complete(consumer._handle(msg))
        except Unhandleable:
            runs["refused (Unhandleable)"] += 1
            assert HANDED == []
            return
        (envelope, ctx), = HANDED
        assert envelope.event_type == subject and isinstance(envelope.data, INBOUND_TYPES[subject])
        assert ctx.tenant_id == envelope.tenant_id and valid_tenant_id(envelope.tenant_id)
        assert ctx.idempotency is not None and ctx.idempotency.key == f"inbound:{envelope.event_id}"
        runs["handed to its subscription"] += 1

    try:
        each()
    finally:
        loop.close()
    assert all(runs.values()) and len(runs) == 2, runs
    figures.record("7b. Inbound consumer: malformed events", examples=sum(runs.values()),
                   outcomes=dict(runs), raised_other_than_Unhandleable=0)



# Hypothesis draws in a worker thread while the service runs on the event loop, whose libraries
# use the `random` module now and then: Hypothesis then suspects the strategy of using it.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_inbound_events_reaching_their_real_effects_are_handled_or_refused_at_once(
    service: Service, figures: Figures
) -> None:
    """With the service's own handlers and database: a nearly right event of a registered
    tenant either has its effect or is refused as Unhandleable (parked at once). Any other
    error would have it retried for minutes (and hold up every later auth announcement),
    though it can never succeed; and what it stored must not stall a read model."""
    await register_tenants(service, "tenant-a")
    consumers = {s.subject: c for c in service.inbound for s in c._by_subject.values()}
    loop = asyncio.get_running_loop()
    runs = Counter[str]()
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=envelopes(sorted(consumers), tenant="tenant-a", corrupt=False))
    def each(case: tuple[str, bytes]) -> None:
        subject, payload = case
        payload = payload.replace(FRESH_ID.encode(), str(uuid.uuid4()).encode())
        msg = Msg(_client=None, subject=subject, data=payload)  # type: ignore[arg-type]
        handled = asyncio.run_coroutine_threadsafe(consumers[subject]._handle(msg), loop)
        try:
            handled.result(timeout=30)
        except Unhandleable:
            runs["refused (Unhandleable)"] += 1
        except Exception as error:
            failures.append(f"{subject} {payload[:300]!r}: {error!r}")
            raise
        else:
            runs["handled"] += 1

    try:
        await asyncio.to_thread(each)
    except Exception as error:
        found = "\n".join(failures[:3])
        raise AssertionError(f"an inbound event failed other than as Unhandleable:\n{found}") from error
    head = await read_models_caught_up(service)
    assert runs["handled"] > 0 and runs["refused (Unhandleable)"] > 0, runs
    figures.record("7b. Inbound events through their real effects", examples=sum(runs.values()),
                   outcomes=dict(runs), events_stored=head,
                   raised_other_than_Unhandleable=0, read_models="caught up with the event store")
