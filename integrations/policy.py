"""The one resilience policy for calls to the platform's other services ("peers").

The integration guide's numbers are the defaults: a 10 s timeout per request; at most 3
retries with exponential backoff from 1 s doubling up to 30 s; a circuit breaker per
peer that opens after 5 consecutive failures and half-opens after 60 s.

Where the guide is silent:

- Only what is safe is retried: timeouts and connection errors, 5xx and 429. Mutations
  are safe to retry because each carries an `Idempotency-Key` derived from the event that
  caused it (`idempotency_key`). Any other 4xx is the peer's answer: never retried.
- Backoff uses *equal jitter*: of each step (1, 2, 4 … s, at most 30) half is kept and
  the other half is random. A retry never comes sooner than half the step nor later
  than the guide's delay, and many ERP instances spread out instead of retrying in step.
- `Retry-After` (on a 429 or 503) is obeyed as given, capped at 30 s, without jitter:
  the peer said when.
- The breaker counts *attempts*, not calls: every request the peer failed to answer
  (timeout, connection error, 5xx) is one failure. Counting whole calls would let 20
  requests — minutes of 10 s timeouts — reach a dead peer before the breaker opened.
  When it opens during a call's retries, the call stops at once with `PeerUnavailable`.
- Any other answer (2xx, a 4xx refusal) proves the peer is up: it resets the count and
  closes a half-open breaker. A 429 counts as neither: the peer is up but asks us to
  wait, and its `Retry-After` says how long.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

import httpx
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

log = structlog.get_logger("erp.integrations")

T = TypeVar("T")

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Failures of the request itself (not of our code or configuration): safe to retry.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    TimeoutError, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
    httpx.ProxyError,
)


class PeerError(Exception):
    """A call to a peer gave no answer we can use."""

    outcome = "error"  # the `outcome` label of erp_peer_calls_total

    def __init__(self, peer: str, operation: str, message: str) -> None:
        super().__init__(f"{peer} {operation}: {message}")
        self.peer = peer
        self.operation = operation


class PeerUnavailable(PeerError):
    """The peer's circuit is open: refused at once, without calling it."""

    outcome = "unavailable"

    def __init__(self, peer: str, operation: str, reason: str, retry_at: datetime | None) -> None:
        when = f"; next try after {retry_at:%Y-%m-%dT%H:%M:%SZ}" if retry_at else ""
        super().__init__(peer, operation, f"unavailable ({reason}){when}")
        self.retry_at = retry_at


class PeerRefused(PeerError):
    """The peer answered a 4xx other than 429: the same request would get the same answer."""

    outcome = "refused"

    def __init__(self, peer: str, operation: str, status: int, problem: dict[str, Any]) -> None:
        detail = problem.get("detail") or problem.get("title")
        super().__init__(peer, operation, f"refused with {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.problem = problem


class PeerFailed(PeerError):
    """Every attempt failed: `status` is the last answer's, or `cause` the last error."""

    outcome = "failed"

    def __init__(self, peer: str, operation: str, *, attempts: int, status: int | None,
                 cause: Exception | None) -> None:
        last = f"status {status}" if status is not None else describe(cause)
        super().__init__(peer, operation, f"failed after {attempts} attempts, the last: {last}")
        self.attempts = attempts
        self.status = status
        self.cause = cause


class PeerResponseInvalid(PeerError):
    """A 2xx whose body is not what we need (e.g. no `invoice_id`): not retried."""

    outcome = "invalid"

    def __init__(self, peer: str, operation: str, detail: str) -> None:
        super().__init__(peer, operation, f"unusable answer: {detail}")


class MissingIdempotencyKey(ValueError):
    """A mutation without an `Idempotency-Key` is never sent: a retry could repeat it."""


def require_idempotency_key(method: str, key: str | None) -> None:
    if method.upper() in MUTATIONS and not (key and key.strip()):
        raise MissingIdempotencyKey(f"a {method.upper()} needs an Idempotency-Key "
                                    "(see idempotency_key); it was not sent")


_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:outbound-call")


def idempotency_key(causing_event_id: UUID | str, action: str) -> str:
    """The `Idempotency-Key` of `action` (e.g. "treasury.create_invoice") done because of
    an event: the same on every retry and every redelivery of that event."""
    event = str(causing_event_id).strip()
    if not event or not action:
        raise ValueError("an idempotency key needs the causing event's id and an action")
    with contextlib.suppress(ValueError):
        event = str(UUID(event))  # one spelling per UUID
    return str(uuid5(_IDEMPOTENCY_NAMESPACE, f"{event}\n{action}"))


@dataclass(frozen=True)
class Resilience:
    """The integration guide's "Error Handling & Resilience" numbers."""

    timeout_seconds: float = 10.0
    max_retries: int = 3
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    max_retry_after_seconds: float = 30.0
    failures_to_open: int = 5
    open_seconds: float = 60.0

    def backoff_seconds(self, retry: int, jitter: float) -> float:
        """Equal jitter: half of the step is kept, the other half scaled by `jitter` in [0, 1]."""
        step = min(self.max_delay_seconds, self.first_delay_seconds * 2.0**retry)
        return step / 2 * (1 + jitter)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header as seconds from `now`: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def describe(outcome: httpx.Response | BaseException | None) -> str:
    """An attempt's outcome in a few words, for errors, logs and `health()`."""
    if isinstance(outcome, httpx.Response):
        return f"{outcome.status_code} {outcome.reason_phrase}".strip()
    if isinstance(outcome, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if outcome is None:
        return "no attempt"
    return f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


_GAUGE_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True)
class PeerHealth:
    """For `erp integrations health` and the `/readyz` detail."""

    peer: str
    state: CircuitState
    consecutive_failures: int
    last_error: str | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    retry_at: datetime | None  # while open: the earliest a trial call may go


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class PeerMetrics:
    """The peers' Prometheus metrics in one registry (see `peer_metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "erp_peer_request_duration_seconds", "One request to a peer (each attempt), in seconds.",
            ["peer", "operation"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter(
            "erp_peer_requests_total", "Requests to peers (each attempt) by result: success, "
            "refused, rate_limited, server_error, timeout, connection_error.",
            ["peer", "operation", "result"], registry=registry)
        self.calls = Counter(
            "erp_peer_calls_total", "Calls to peers by final outcome after retries: success, "
            "refused, failed, unavailable, invalid.", ["peer", "operation", "outcome"], registry=registry)
        self.circuit_state = Gauge(
            "erp_peer_circuit_state", "Circuit breaker per peer: 0 closed, 1 half-open, 2 open.",
            ["peer"], registry=registry)
        self.consecutive_failures = Gauge(
            "erp_peer_consecutive_failures", "Failed requests in a row per peer.", ["peer"],
            registry=registry)


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, PeerMetrics] = (
    weakref.WeakKeyDictionary())


def peer_metrics(registry: CollectorRegistry | None = None) -> PeerMetrics:
    """The metrics in `registry` (default: the process's), made once per registry: a
    registry refuses the same metric name twice."""
    registry = REGISTRY if registry is None else registry
    if registry not in _metrics_by_registry:
        _metrics_by_registry[registry] = PeerMetrics(registry)
    return _metrics_by_registry[registry]


class CircuitBreaker:
    """One peer's breaker. Closed: requests go and failures in a row are counted. Open:
    refused at once for `open_seconds`. Half-open: one trial request; an answer closes
    the breaker, a failure opens it again."""

    def __init__(self, peer: str, limits: Resilience, metrics: PeerMetrics,
                 clock: Callable[[], float]) -> None:
        self.peer = peer
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_failure_at: datetime | None = None
        self.last_success_at: datetime | None = None
        self._opened_at = 0.0
        self._trial_running = False
        self._become(CircuitState.CLOSED)

    def admit(self, operation: str) -> None:
        """Returns if a request may go now; raises `PeerUnavailable` otherwise."""
        if self.state is CircuitState.OPEN:
            if self._clock() < self._opened_at + self._limits.open_seconds:
                raise self.unavailable(operation)
            self._become(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN:
            if self._trial_running:
                raise PeerUnavailable(self.peer, operation, "circuit half-open and its trial call "
                                      "is under way", None)
            self._trial_running = True

    def answered(self) -> None:
        self.consecutive_failures = 0
        self.last_success_at = datetime.now(UTC)
        self._trial_running = False
        self._metrics.consecutive_failures.labels(self.peer).set(0)
        if self.state is not CircuitState.CLOSED:
            self._become(CircuitState.CLOSED)

    def failed(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        self.last_failure_at = datetime.now(UTC)
        self._trial_running = False
        self._metrics.consecutive_failures.labels(self.peer).set(self.consecutive_failures)
        if (self.state is CircuitState.HALF_OPEN
                or self.consecutive_failures >= self._limits.failures_to_open):
            self._opened_at = self._clock()
            self._become(CircuitState.OPEN)

    def released(self) -> None:
        """The attempt ended as neither answer nor failure (429, cancelled): a half-open
        breaker may make its trial again."""
        self._trial_running = False

    def unavailable(self, operation: str) -> PeerUnavailable:
        return PeerUnavailable(self.peer, operation, f"circuit open after {self.consecutive_failures} "
                               f"consecutive failures, the last: {self.last_error}", self.retry_at())

    def retry_at(self) -> datetime | None:
        if self.state is not CircuitState.OPEN:
            return None
        remaining = self._opened_at + self._limits.open_seconds - self._clock()
        return datetime.now(UTC) + timedelta(seconds=max(0.0, remaining))

    def health(self) -> PeerHealth:
        return PeerHealth(peer=self.peer, state=self.state, consecutive_failures=self.consecutive_failures,
                          last_error=self.last_error, last_failure_at=self.last_failure_at,
                          last_success_at=self.last_success_at, retry_at=self.retry_at())

    def _become(self, state: CircuitState) -> None:
        if state is not self.state:
            report = log.error if state is CircuitState.OPEN else log.info
            report("peer circuit " + state.value.replace("_", "-"), peer=self.peer,
                   consecutive_failures=self.consecutive_failures, last_error=self.last_error)
        self.state = state
        self._metrics.circuit_state.labels(self.peer).set(_GAUGE_VALUE[state])


def _result(outcome: httpx.Response | Exception) -> str:
    """The `result` label of one attempt."""
    if isinstance(outcome, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(outcome, Exception):
        return "connection_error"
    if outcome.is_success:
        return "success"
    if outcome.status_code == 429:
        return "rate_limited"
    return "server_error" if outcome.status_code >= 500 else "refused"


def _retryable(result: str) -> bool:
    return result in ("rate_limited", "server_error", "timeout", "connection_error")


def _problem(response: httpx.Response) -> dict[str, Any]:
    """A refusal's body: its problem+json (or any JSON object), else its text."""
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:500]} if response.text else {}
    return body if isinstance(body, dict) else {"detail": body}


class Policy:
    """Every call to a peer goes through here: timeout, retries, breaker, metrics.

    `clock` (monotonic seconds), `sleep` and `jitter` (a number in [0, 1]) can be given,
    so tests need not wait for backoffs and breakers."""

    def __init__(self, limits: Resilience | None = None, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.limits = limits or Resilience()
        self.metrics = peer_metrics(registry)
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, peer: str) -> CircuitBreaker:
        if peer not in self._breakers:
            self._breakers[peer] = CircuitBreaker(peer, self.limits, self.metrics, self._clock)
        return self._breakers[peer]

    def health(self) -> list[PeerHealth]:
        return [breaker.health() for _, breaker in sorted(self._breakers.items())]

    async def call(self, peer: str, operation: str, send: Callable[[], Awaitable[httpx.Response]],
                   read: Callable[[httpx.Response], T]) -> T:
        """`send` makes one request; `read` makes the result of a 2xx (or raises
        `PeerResponseInvalid`). Raises a `PeerError` when there is no usable answer."""
        try:
            result = read(await self._with_retries(peer, operation, send))
        except PeerError as error:
            self.metrics.calls.labels(peer, operation, error.outcome).inc()
            raise
        self.metrics.calls.labels(peer, operation, "success").inc()
        return result

    async def _with_retries(self, peer: str, operation: str,
                            send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        breaker = self.breaker(peer)
        attempts = self.limits.max_retries + 1
        for attempt in range(1, attempts + 1):
            breaker.admit(operation)
            outcome = await self._attempt(breaker, operation, send)
            if isinstance(outcome, httpx.Response) and not _retryable(_result(outcome)):
                if outcome.is_success:
                    return outcome
                raise PeerRefused(peer, operation, outcome.status_code, _problem(outcome))
            cause = outcome if isinstance(outcome, Exception) else None
            if breaker.state is CircuitState.OPEN:
                raise breaker.unavailable(operation) from cause
            if attempt < attempts:
                delay = self._delay(attempt - 1, outcome)
                log.warning("peer call failed, retrying", peer=peer, operation=operation,
                            error=describe(outcome), attempt=attempt, retry_in_seconds=round(delay, 3))
                await self._sleep(delay)
        status = outcome.status_code if isinstance(outcome, httpx.Response) else None
        raise PeerFailed(peer, operation, attempts=attempts, status=status, cause=cause) from cause

    async def _attempt(self, breaker: CircuitBreaker, operation: str,
                       send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response | Exception:
        """One request under the timeout; its outcome told to the breaker and the metrics."""
        started = time.perf_counter()
        outcome: httpx.Response | Exception
        try:
            async with asyncio.timeout(self.limits.timeout_seconds):
                outcome = await send()
        except RETRYABLE_ERRORS as error:
            outcome = error
        except BaseException:
            breaker.released()  # cancelled, or a bug of ours: says nothing about the peer
            raise
        finally:
            self.metrics.latency.labels(breaker.peer, operation).observe(time.perf_counter() - started)
        result = _result(outcome)
        self.metrics.requests.labels(breaker.peer, operation, result).inc()
        if result == "rate_limited":
            breaker.released()
        elif _retryable(result):
            breaker.failed(describe(outcome))
        else:
            breaker.answered()
        return outcome

    def _delay(self, retry: int, outcome: httpx.Response | Exception) -> float:
        if isinstance(outcome, httpx.Response) and outcome.status_code in (429, 503):
            after = retry_after_seconds(outcome.headers.get("Retry-After"), datetime.now(UTC))
            if after is not None:
                return min(after, self.limits.max_retry_after_seconds)
        return self.limits.backoff_seconds(retry, self._jitter())
