"""`/metrics` for Prometheus: HTTP latency by route and status, commands by command and
outcome and events recorded by type (erp/commands), the relay, projectors, inbound
consumers (redeliveries too) and dead letters of this process, and the peers' calls and
breakers (integrations/policy.py). Scraped inside the cluster; it carries no tenant data."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.openapi import operation
from erp.bootstrap import Service

HTTP_SECONDS = Histogram("erp_http_request_duration_seconds", "HTTP requests by route and status",
                         ["method", "route", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_SECONDS.labels(method, route, str(status)).observe(seconds)


class ServiceCollector(Collector):
    """The state of one running service, read when scraped."""

    def __init__(self, service: Service, log_head: int, dead_letters: int) -> None:
        self._service = service
        self._head = log_head
        self._dead_letters = dead_letters

    def collect(self) -> Iterator[Metric]:
        s = self._service
        leading = GaugeMetricFamily("erp_leading", "1 where this process leads the role", labels=["role"])
        for role in sorted(s.leading):
            leading.add_metric([role], 1)
        yield leading
        yield GaugeMetricFamily("erp_event_log_head", "the event store's last log position", value=self._head)
        if s.relay is not None:
            yield CounterMetricFamily("erp_relay_published", "events published by this process's relay",
                                      value=s.relay.published_total)
            yield CounterMetricFamily("erp_relay_publish_failures", "refused or unacknowledged publishes",
                                      value=s.relay.failures)
            if "relay" in s.leading:
                yield GaugeMetricFamily("erp_relay_lag_events", "stored events not yet in the stream",
                                        value=max(0, self._head - s.relay.published_position))
        lag = GaugeMetricFamily("erp_projector_lag_events", "stored events a read model has not applied, "
                                "counted in log positions (a rolled-back save leaves one unused)",
                                labels=["projection"])
        for runner in s.projectors:
            name = runner.projection.name
            lag.add_metric([name], max(0, self._head - s.positions.position(name)))
        yield lag
        resubscribes = CounterMetricFamily("erp_projector_resubscribes", "a projector starting again from "
                                           "its checkpoint", labels=["projection"])
        skipped = CounterMetricFamily("erp_projector_redelivered", "events delivered again to a projector "
                                      "after being applied (skipped)", labels=["projection"])
        for runner in s.projectors:
            resubscribes.add_metric([runner.projection.name], runner.resubscribes)
            skipped.add_metric([runner.projection.name], runner.redelivered)
        yield from (resubscribes, skipped)
        handled = CounterMetricFamily("erp_inbound_handled", "inbound events handled", labels=["consumer"])
        parked = CounterMetricFamily("erp_inbound_parked", "inbound events parked as dead letters",
                                     labels=["consumer"])
        pending = GaugeMetricFamily("erp_inbound_pending", "inbound events waiting (consumer lag)",
                                    labels=["consumer"])
        redelivered = CounterMetricFamily("erp_inbound_redelivered", "inbound deliveries after the first "
                                          "(retries, lost acknowledgements)", labels=["consumer"])
        for consumer in s.inbound:
            handled.add_metric([consumer.durable], consumer.handled)
            parked.add_metric([consumer.durable], consumer.terminated)
            pending.add_metric([consumer.durable], consumer.pending)
            redelivered.add_metric([consumer.durable], consumer.redelivered)
        yield from (handled, parked, pending, redelivered)
        yield GaugeMetricFamily("erp_dead_letters", "messages in the dead-letter stream",
                                value=self._dead_letters)


async def dead_letter_count(service: Service) -> int:
    with contextlib.suppress(NotFoundError, asyncio.TimeoutError):
        info = await service.js.stream_info(service.settings.dead_letter_stream)
        return int(info.state.messages)
    return 0


@operation(summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    head = await asyncio.to_thread(service.store.recorder.max_notification_id) or 0
    mine = CollectorRegistry()
    mine.register(ServiceCollector(service, head, await dead_letter_count(service)))
    body = generate_latest(REGISTRY) + generate_latest(mine)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
