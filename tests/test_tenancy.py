"""Tenants cannot see or touch each other's data: PostgreSQL enforces it, and every route
answers another tenant's ids with 404 (or an empty list)."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from starlette.routing import Route

from api.app import ROUTES
from api.auth import PUBLIC_PATHS, SIGNED_PREFIX
from erp.bootstrap import Service
from projections.tenancy import API_ROLE, NOT_READ_MODELS, tenant_queries, tenant_rows
from tests.conftest import as_user, settings
from tests.test_hrm_api import employee
from tests.test_manufacturing_api import CAKE

LINE = {"item_id": "cement", "quantity": 1, "unit": "bag", "unit_price": 10}
# A valid body for every route that names an aggregate, so only the tenant can refuse it.
BODIES: dict[str, Any] = {
    "update": {"title": "mine now"}, "change_stage": {"stage": "proposal"}, "win": {"amount": 1},
    "lose": {"reason": "x"}, "reopen": {"reason": "x"}, "release": {}, "start": None,
    "consume": {"item_id": "flour", "quantity": 1, "unit_cost": 1}, "produce": {"quantity": 1},
    "record_labour": {"hours": 1, "rate": 1}, "stop": {"reason": "x"}, "resume": None,
    "complete": None, "close": {}, "change_pay": {"basic_pay": 1, "effective": "2026-03"},
    "terminate": {"on": "2026-03-01", "reason": "x"}, "calculate": None, "approve": None,
    "process": None, "cancel": {"reason": "x"}, "add_line": LINE,
    "update_line": {"line_no": 1, **LINE}, "remove_line": {"line_no": 1},
    "submit": {}, "receive": {"lines": [{"line_no": 1, "accepted_quantity": 1}]},
    "reject": {"reason": "x"}, "set_credential": {"value": "their-secret-value"},
    "delete_credential": None, "deactivate": None,
}
BODIES_BY_PATH = {
    "/api/v1/procurement/purchase-orders/{purchase_order_id:uuid}/approve": {"role": "approver"},
    "/api/v1/manufacturing/work-orders/{work_order_id:uuid}/close": None,
}
QUERIES = {"statutory_summary": {"period": "2026-02"}}
# Names chosen by the tenant, not ids: another tenant's call acts on its own namespace.
OWN_NAMESPACE = {"publish_bom_version", "set_credential"}


async def created(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    response = await client.post(path, json=body)
    assert response.status_code == 201, response.text
    found: str = response.json()["id"]
    return found


async def tenant_a_has_one_of_everything(client: httpx.AsyncClient) -> dict[str, str]:
    ids = {
        "opportunity_id": await created(client, "/api/v1/crm/opportunities",
                                        {"customer_id": "c1", "title": "t", "owner": "o"}),
        "employee_id": await created(client, "/api/v1/hrm/employees", employee("E1")),
        "payroll_id": await created(client, "/api/v1/hrm/payroll-runs", {"period": "2026-02"}),
        "purchase_order_id": await created(client, "/api/v1/procurement/purchase-orders",
                                           {"vendor_id": "vendor-1", "lines": [LINE]}),
        "work_order_id": await created(client, "/api/v1/manufacturing/work-orders",
                                       {"product_id": "cake", "planned_quantity": 1}),
    }
    await created(client, "/api/v1/manufacturing/boms/cake/versions", CAKE)
    secret = await client.put("/api/v1/integrations/credentials/treasury.api-key",
                              json={"value": "tenant-a-secret-0001"})
    assert secret.status_code == 200, secret.text
    hook = await client.post("/api/v1/settings/webhooks", json={"url": "https://hooks.example/erp",
                                                                "event_types": ["erp.opportunity.won"]})
    assert hook.status_code == 201, hook.text
    return {**ids, "product_id": "cake", "vendor_id": "vendor-1", "name": "treasury.api-key",
            "endpoint_id": hook.json()["endpoint_id"]}


async def test_every_route_answers_another_tenants_ids_with_not_found(client: httpx.AsyncClient) -> None:
    ids = await tenant_a_has_one_of_everything(client)
    theirs = as_user("tenant-b", roles=("erp.superuser", "approver"))
    traces = [*(ids[k] for k in ids if k not in ("vendor_id", "product_id", "name")), "tenant-a"]
    checked = 0
    for route in ROUTES:
        assert isinstance(route, Route)
        if route.path in PUBLIC_PATHS or route.path.startswith(SIGNED_PREFIX):  # no tenant ids to try
            continue
        path = route.path
        for name in route.param_convertors:
            path = path.replace(next(p for p in path.split("/") if p.startswith(f"{{{name}")), ids[name])
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if method == "GET":
                response = await client.get(path, headers=theirs, params=QUERIES.get(route.name))
                if route.param_convertors and "commitments" not in path:
                    assert response.status_code == 404, (path, response.text)
                else:  # a list, summary or their own settings: nothing of tenant a's
                    assert response.status_code == 200, (path, response.text)
                    assert not any(mine in response.text for mine in traces), path
                    assert response.json().get("items", response.json().get("commitments", [])) == [], path
            elif route.param_convertors and route.name not in OWN_NAMESPACE:
                body = BODIES_BY_PATH.get(route.path, BODIES.get(route.name))
                assert route.name in BODIES or route.path in BODIES_BY_PATH, f"no body for {route.path}"
                response = await client.request(method, path, json=body, headers=theirs)
                assert response.status_code == 404, (method, path, response.text)
            checked += 1
    assert checked >= 60
    # Tenant a's data is untouched: its credential is still its own, its order still a draft.
    mine = (await client.get("/api/v1/integrations/credentials")).json()["items"]
    assert ("treasury.api-key", "••••0001") in [(c["name"], c["hint"]) for c in mine]


async def test_the_database_hides_other_tenants_rows_from_the_api_role(
    client: httpx.AsyncClient, service: Service
) -> None:
    for tenant in ("tenant-a", "tenant-b"):
        response = await client.post("/api/v1/crm/opportunities", headers=as_user(tenant),
                                     json={"customer_id": "c", "title": tenant, "owner": "o"})
        last = response.json()["log_position"]
    await client.get("/api/v1/crm/opportunities", params={"min_position": last})

    # The API's own pool, a query with no tenant filter: only the named tenant's rows.
    _, rows = await tenant_rows(service.read_pool, "tenant-a",
                                "SELECT tenant_id, title FROM opportunities", ())
    assert rows == [("tenant-a", "tenant-a")]
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        owner = await (await conn.execute("SELECT count(*) FROM opportunities")).fetchone()
        assert owner == (2,)  # the projectors' role sees every tenant
        await conn.execute(f"SET ROLE {API_ROLE}")
        unnamed = await (await conn.execute("SELECT count(*) FROM opportunities")).fetchone()
        assert unnamed == (0,)  # forgetting to name the tenant shows nothing
        await conn.execute("SELECT set_config('erp.tenant_id', 'tenant-b', true)")
        named = await (await conn.execute("SELECT tenant_id FROM opportunities")).fetchall()
        assert named == [("tenant-b",)]
        for forbidden in ("SELECT count(*) FROM erp_events", "SELECT count(*) FROM tier1_credentials",
                          "DELETE FROM opportunities", "SELECT count(*) FROM idempotency_keys",
                          "SELECT secret_hash FROM api_keys"):
            async with conn.transaction(force_rollback=True):
                try:
                    await conn.execute(forbidden)
                    raise AssertionError(f"the API role may run {forbidden}")
                except psycopg.errors.InsufficientPrivilege:
                    pass
        role = await (await conn.execute(
            "SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = %s", (API_ROLE,))).fetchone()
        assert role == (False, False)


async def test_the_tenant_named_for_reads_holds_for_all_of_them_and_ends_with_them(
    client: httpx.AsyncClient, service: Service
) -> None:
    for tenant, title in (("tenant-a", "first"), ("tenant-a", "second"), ("tenant-b", "theirs")):
        response = await client.post("/api/v1/crm/opportunities", headers=as_user(tenant),
                                     json={"customer_id": "c", "title": title, "owner": "o"})
        last = response.json()["log_position"]
    await client.get("/api/v1/crm/opportunities", params={"min_position": last})

    # Three queries in one round trip, each seeing only tenant-a's rows.
    titles, count, nothing = await tenant_queries(service.read_pool, "tenant-a", [
        ("SELECT title FROM opportunities ORDER BY title", ()),
        ("SELECT count(*) AS n FROM opportunities WHERE title <> %s", ("first",)),
        ("SELECT title FROM opportunities WHERE title = %(title)s", {"title": "theirs"}),
    ])
    assert titles == (["title"], [("first",), ("second",)])
    assert count == (["n"], [(1,)])
    assert nothing == (["title"], [])
    # A query that fails raises its error; the pool's connections stay usable.
    with pytest.raises(psycopg.errors.UndefinedColumn):
        await tenant_rows(service.read_pool, "tenant-a", "SELECT no_such_column FROM opportunities", ())
    # On each of the pool's connections, the tenant named for the reads is gone after them.
    connections = []
    for _ in range(service.settings.db_pool_size):
        connections.append(await service.read_pool.getconn())
    try:
        for conn in connections:
            setting = await (await conn.execute("SELECT current_setting('erp.tenant_id', true)")).fetchone()
            seen = await (await conn.execute("SELECT count(*) FROM opportunities")).fetchone()
            assert (setting, seen) in {(("",), (0,)), ((None,), (0,))}
    finally:
        for conn in connections:
            await service.read_pool.putconn(conn)


async def test_every_table_with_tenant_rows_has_row_level_security(
    client: httpx.AsyncClient, service: Service
) -> None:
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' "
            "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace")
        tables: dict[str, bool] = dict(await cur.fetchall())
    read_models = {t: rls for t, rls in tables.items() if t not in NOT_READ_MODELS}
    assert len(read_models) >= 14 and all(read_models.values()), read_models


async def test_with_its_own_login_the_api_cannot_step_out_of_its_role(
    client: httpx.AsyncClient, service: Service
) -> None:
    url = service.endpoints.database_url
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"""DO $$ BEGIN CREATE ROLE erp_api_login LOGIN IN ROLE {API_ROLE};
                           EXCEPTION WHEN duplicate_object THEN NULL; END $$""")
    login = url.replace("postgres@", "erp_api_login@")
    api = Service(settings(api_database_url=login), service.endpoints)
    await api.start()
    try:
        await client.post("/api/v1/crm/opportunities", json={"customer_id": "c", "title": "t", "owner": "o"})
        async with api.read_pool.connection() as conn:
            await conn.execute("RESET ROLE")  # what an injected query could try
            who = await (await conn.execute("SELECT current_user")).fetchone()
            assert who == ("erp_api_login",)
            unnamed = await (await conn.execute("SELECT count(*) FROM opportunities")).fetchone()
            assert unnamed == (0,)
            try:
                await conn.execute("SELECT count(*) FROM erp_events")
                raise AssertionError("the API login may read the event store")
            except psycopg.errors.InsufficientPrivilege:
                pass
    finally:
        await api.stop()
