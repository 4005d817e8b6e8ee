"""Snapshots: an aggregate loaded from its latest snapshot is exactly the aggregate its
events make, for every kind of aggregate and every type of value in its state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from typing import Any

import httpx
import pytest

from erp.aggregate_cache import decision_copy
from erp.bootstrap import Endpoints, Service
from erp.eventstore import ErpEventStore, aggregate_classes, eventsourcing_env
from tests.conftest import settings
from tests.test_hrm_api import ok
from tests.test_manufacturing_api import BOMS, CAKE, WORK_ORDERS, post
from tests.test_rebuild import build_history


@pytest.fixture
async def service(endpoints: Endpoints) -> AsyncIterator[Service]:
    running = Service(settings(snapshot_interval=1), endpoints)  # a snapshot after every event
    await running.start()
    yield running
    await running.stop()


def _mutable_parts(value: Any) -> set[int]:
    """The ids of every list, dict, set and object with attributes reachable from `value`."""
    found: set[int] = set()
    if isinstance(value, (list, set, tuple, frozenset)):
        items: list[Any] = list(value)
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif hasattr(value, "__dict__") and not isinstance(value, (type, Enum)):
        items = list(vars(value).values())
    else:
        return found
    frozen = getattr(getattr(type(value), "__dataclass_params__", None), "frozen", False)
    if not isinstance(value, (tuple, frozenset)) and not frozen:
        found.add(id(value))
    for item in items:
        found |= _mutable_parts(item)
    return found


def every_aggregate(store: ErpEventStore) -> list[Any]:
    with store.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute("SELECT DISTINCT originator_id FROM erp_events").fetchall()
    return [row["originator_id"] for row in rows]


async def test_every_aggregate_loads_from_its_snapshot_as_its_events_make_it(
    client: httpx.AsyncClient, service: Service
) -> None:
    await build_history(client)
    await post(client, f"{BOMS}/cake/versions", CAKE)
    order = (await post(client, WORK_ORDERS, {"product_id": "cake", "planned_quantity": 10}))["id"]
    for step in ("release", "start"):
        await post(client, f"{WORK_ORDERS}/{order}/{step}")
    await post(client, f"{WORK_ORDERS}/{order}/consume", {"item_id": "flour", "quantity": 2, "unit_cost": 80})
    run = (await ok(client, "/api/v1/hrm/payroll-runs", {"period": "2026-03"}, status=201))["id"]
    for step in ("calculate", "approve", "process"):
        await ok(client, f"/api/v1/hrm/payroll-runs/{run}/{step}")

    ids = await asyncio.to_thread(every_aggregate, service.store)
    assert service.store.snapshots is not None
    events_only = ErpEventStore(env=eventsourcing_env(service.endpoints.database_url, 1))
    try:
        kinds = set()
        for aggregate_id in ids:
            snapshots = list(service.store.snapshots.get(aggregate_id, desc=True, limit=1))
            assert snapshots, f"no snapshot of {aggregate_id}"
            from_snapshot: Any = service.store.repository.get(aggregate_id)
            from_events: Any = events_only.repository.get(aggregate_id)
            assert type(from_snapshot) is type(from_events)
            assert vars(from_snapshot) == vars(from_events), type(from_events).__name__
            # What a cached decision works on: equal, and no mutable part shared.
            copied = decision_copy(from_events)
            assert type(copied) is type(from_events) and vars(copied) == vars(from_events)
            assert not _mutable_parts(copied) & _mutable_parts(from_events), type(from_events).__name__
            kinds.add(type(from_events))
    finally:
        events_only.close()
    assert kinds == set(aggregate_classes())
