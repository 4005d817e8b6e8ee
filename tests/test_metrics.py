"""/metrics for Prometheus and the /readyz detail."""

from __future__ import annotations

import re
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from erp.bootstrap import Service
from tests.conftest import ROOT, eventually

OPPORTUNITIES = "/api/v1/crm/opportunities"


async def test_metrics_show_http_latency_relay_projectors_and_consumers(
    client: httpx.AsyncClient, service: Service
) -> None:
    opened = await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"})
    oid = opened.json()["id"]
    await client.get(f"{OPPORTUNITIES}/{oid}", params={"min_position": opened.json()["log_position"]})
    await client.get(f"{OPPORTUNITIES}/{oid}", headers={"Authorization": ""})

    async def scraped() -> dict[str, list[tuple[dict[str, str], float]]]:
        response = await client.get("/metrics", headers={"Authorization": ""})
        assert response.status_code == 200
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found if found.get("erp_relay_published_total", [({}, 0)])[0][1] >= 5 else {}
    metrics = await eventually(scraped, timeout=15)

    routes = {(s["route"], s["status"]) for s, _ in metrics["erp_http_request_duration_seconds_count"]}
    assert {(OPPORTUNITIES, "201"), (OPPORTUNITIES + "/{opportunity_id:uuid}", "200"),
            ("unmatched", "401")} <= routes  # a route's template, never its ids
    lags = {s["projection"]: v for s, v in metrics["erp_projector_lag_events"]}
    assert set(lags) >= {"opportunities", "users"} and all(v >= 0 for v in lags.values())
    assert {s["consumer"] for s, _ in metrics["erp_inbound_handled_total"]} >= {"erp-auth", "erp-treasury"}
    assert metrics["erp_dead_letters"][0][1] == 0
    commands = {(s["command"], s["outcome"]): v for s, v in metrics["erp_commands_total"]}
    assert commands[("open_opportunity", "saved")] >= 1
    events = {s["type"]: v for s, v in metrics["erp_events_recorded_total"]}
    assert events["erp.opportunity.opened"] >= 1
    assert {s["consumer"] for s, _ in metrics["erp_inbound_redelivered_total"]} >= {"erp-auth"}
    assert {s["projection"] for s, _ in metrics["erp_projector_redelivered_total"]} >= {"opportunities"}
    assert metrics["erp_event_log_head"][0][1] >= 5


async def test_readiness_details_consumers_and_peers(client: httpx.AsyncClient) -> None:
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert {c["consumer"] for c in ready["inbound"]} == {
        "erp-auth", "erp-treasury", "erp-inventory", "erp-logistics", "erp-pos", "erp-iot", "erp-projects"}
    assert ready["peers"] == []  # no peer called by this process yet


async def test_a_role_that_keeps_failing_makes_the_service_degraded(
    client: httpx.AsyncClient, service: Service, js: Any
) -> None:
    """The API still serves, but the relay cannot publish: readiness says so and why."""
    assert (await client.get("/readyz")).json()["failing"] == {}
    await js.delete_stream("ERP")  # an operator's mistake
    await client.post(OPPORTUNITIES, json={"customer_id": "c", "title": "t", "owner": "o"})

    async def degraded() -> Any:
        ready = (await client.get("/readyz")).json()
        return ready if ready["status"] == "degraded" and "relay" in ready["failing"] else None
    ready = await eventually(degraded)
    assert ready["checks"] == {"postgresql": "ok", "nats": "ok"} and "NotFound" in ready["failing"]["relay"]


async def test_the_alert_rules_parse_and_use_only_metrics_we_export(client: httpx.AsyncClient) -> None:
    rules = yaml.safe_load((ROOT / "docs" / "prometheus-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts}
    assert {"ErpHighFailureRate", "ErpServiceUnavailable", "ErpEventDeliveryFailing",
            "ErpIntegrationTimeouts"} <= names  # the integration guide's alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    exported = {family.name for family in text_string_to_metric_families(
        (await client.get("/metrics", headers={"Authorization": ""})).text)}
    for rule in alerts:
        for metric in re.findall(r"\b(erp_[a-z_]+)", rule["expr"]):
            base = re.sub(r"_(total|count|sum|bucket)$", "", metric)
            assert base in exported, f"{rule['alert']} uses {metric}, which /metrics does not export"
