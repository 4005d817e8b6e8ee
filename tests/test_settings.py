"""A tenant's business settings: defaults, validation, and payroll rate overrides."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from aggregates.errors import InvalidValue
from aggregates.statutory import payslip, rules_for
from aggregates.tenant_settings import InvalidStatutoryOverride, Stage, TenantSettings
from tests.conftest import as_user


def test_a_tenant_starts_with_the_defaults() -> None:
    settings = TenantSettings(tenant_id="acme")
    assert settings.id == TenantSettings.id_for("acme")
    assert [s.name for s in settings.stages][:2] == ["qualification", "needs_analysis"]
    assert settings.approval_chain.roles_for(Decimal(150_000)) == ["approver", "finance"]
    assert settings.over_receipt_percent == 0


@pytest.mark.parametrize("stages", [[], [Stage("a", 1), Stage("a", 2)], [Stage("lost", 0)],
                                    [Stage("x", 101)]])
def test_bad_stages_are_refused(stages: list[Stage]) -> None:
    with pytest.raises(InvalidValue):
        TenantSettings(tenant_id="acme").configure_stages(stages)


def test_tolerances_are_percentages() -> None:
    with pytest.raises(InvalidValue):
        TenantSettings(tenant_id="acme").configure_tolerances(
            over_receipt_percent=Decimal(120), over_production_percent=Decimal(0),
            over_consumption_percent=Decimal(0))


def test_a_rate_override_applies_from_its_month_only() -> None:
    settings = TenantSettings(tenant_id="acme")
    settings.override_statutory("2026-03", "board decision 12", {"shif_minimum": Decimal(500)})
    overrides = settings.statutory_overrides
    before = payslip(Decimal(5000), [], "primary", rules_for("2026-02", overrides=overrides))
    after = payslip(Decimal(5000), [], "primary", rules_for("2026-03", overrides=overrides))
    assert (before.shif, after.shif) == (Decimal("300.00"), Decimal("500.00"))
    with pytest.raises(InvalidStatutoryOverride):
        settings.override_statutory("2026-04", "x", {"paye_bands": Decimal(1)})


async def test_overrides_are_set_and_shown_through_the_api(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/settings/statutory-overrides", json={
        "effective_from": "2026-05", "source": "collective agreement",
        "changes": {"housing_levy_employer_rate": 0.02}})
    assert response.status_code == 200, response.text
    shown = (await client.get("/api/v1/settings")).json()
    assert shown["statutory_overrides"] == [{"effective_from": "2026-05",
                                             "source": "collective agreement",
                                             "changes": {"housing_levy_employer_rate": 0.02}}]
    assert shown["version"] == response.json()["version"] == 3  # initialised, described, overridden
    history = (await client.get("/api/v1/settings/history")).json()["changes"]
    assert [(c["version"], c["change"], c["changed_by"]) for c in history] == [
        (1, "Initialised", ""), (2, "Described", ""), (3, "StatutoryOverridden", "user-1")]
    assert history[2]["details"]["changes"] == {"housing_levy_employer_rate": 0.02}
    bad = await client.post("/api/v1/settings/statutory-overrides", json={
        "effective_from": "2026-13", "source": "x", "changes": {"shif_rate": 0.03}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.effective_from"
    huge = await client.post("/api/v1/settings/statutory-overrides", json={
        "effective_from": "2026-06", "source": "x", "changes": {"personal_relief": 1e30}})
    assert (huge.status_code, huge.json()["rule"]) == (422, "InvalidRules"), huge.text
    assert huge.json()["errors"][0]["field"] == "body.changes.personal_relief"


async def test_business_terms_are_validated_versioned_and_attributed(client: httpx.AsyncClient) -> None:
    terms = {"currency": "USD", "payment_terms_days": 45,
             "notifications": {"payroll.processed": ["email", "sms"]}}
    changed = await client.post("/api/v1/settings/business-terms", json=terms,
                                headers=as_user(subject="admin-7", roles=("erp.admin",)))
    assert changed.status_code == 200, changed.text
    shown = (await client.get("/api/v1/settings")).json()
    assert (shown["currency"], shown["payment_terms_days"], shown["notifications"]) == (
        "USD", 45, {"payroll.processed": ["email", "sms"]})
    last = (await client.get("/api/v1/settings/history")).json()["changes"][-1]
    assert (last["change"], last["changed_by"]) == ("BusinessTermsConfigured", "admin-7")
    unknown = await client.post("/api/v1/settings/business-terms",
                                json={**terms, "notifications": {"lunch.served": ["email"]}})
    assert unknown.status_code == 422 and unknown.json()["rule"] == "InvalidBusinessTerms"
    viewer = await client.post("/api/v1/settings/business-terms", json=terms,
                               headers=as_user(roles=("erp.viewer",)))
    assert viewer.status_code == 403  # tier 2 is for tenant admins

    # the tenant's currency is the default of new documents; one named is kept
    defaulted = {"customer_id": "c", "title": "t", "owner": "o"}
    dollars = (await client.post("/api/v1/crm/opportunities", json=defaulted)).json()
    shillings = (await client.post("/api/v1/crm/opportunities", json={**defaulted, "currency": "KES"})).json()
    order = (await client.post("/api/v1/procurement/purchase-orders", json={"vendor_id": "v"})).json()
    work = (await client.post("/api/v1/manufacturing/work-orders",
                              json={"product_id": "cake", "planned_quantity": 1})).json()
    for created, path, currency in (
            (dollars, "crm/opportunities", "USD"), (shillings, "crm/opportunities", "KES"),
            (order, "procurement/purchase-orders", "USD"), (work, "manufacturing/work-orders", "USD")):
        shown = (await client.get(f"/api/v1/{path}/{created['id']}",
                                  params={"min_position": created["log_position"]})).json()
        assert shown["currency"] == currency, (path, shown)


async def test_every_settings_change_honours_if_match(client: httpx.AsyncClient) -> None:
    """Two admins editing the settings at once: the second, on a stale version, is 412."""
    changes = {
        "/api/v1/settings/business-terms": {"currency": "KES", "payment_terms_days": 30},
        "/api/v1/settings/tolerances": {"over_receipt_percent": 5, "over_production_percent": 0,
                                        "over_consumption_percent": 0},
    }
    for path, body in changes.items():
        seen = await client.get("/api/v1/settings")
        etag = seen.headers["etag"]
        stale = f'"{int(etag.strip(chr(34))) - 1}"'
        refused = await client.post(path, json=body, headers={"If-Match": stale})
        assert refused.status_code == 412, (path, refused.text)
        accepted = await client.post(path, json=body, headers={"If-Match": etag})
        assert accepted.status_code == 200, (path, accepted.text)
        again = await client.post(path, json=body, headers={"If-Match": etag})  # now stale itself
        assert again.status_code == 412, (path, again.text)
