"""Purchase orders through HTTP, the event store, JetStream and the read models: the
lifecycle from draft to goods receipt, approval by amount, numbering, the tenant's
settings, idempotent commands and tenancy."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from aggregates.dates import business_date
from erp.bootstrap import Service
from tests.conftest import as_user, read_stream

BASE = "/api/v1/procurement/purchase-orders"
YEAR = business_date().year


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str) -> Any:
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def refused(client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str
                  ) -> tuple[int, str]:
    response = await client.post(path, json=body, headers=headers)
    assert response.headers["content-type"] == "application/problem+json", response.text
    rule: str = response.json().get("rule", "")
    return response.status_code, rule


def by(subject: str, role: str) -> dict[str, str]:
    """Headers of `subject`, a procurement user holding the approval role `role`."""
    return as_user(subject=subject, roles=("procurement.user", role))


def line(item_id: str = "cement", quantity: Any = 10, unit_price: Any = 1000, **more: Any) -> Any:
    return {"item_id": item_id, "description": f"{item_id} bags", "quantity": quantity,
            "unit": "bag", "unit_price": unit_price, **more}


async def created(client: httpx.AsyncClient, *lines: Any, **fields: Any) -> Any:
    body = {"vendor_id": "vendor-1", "lines": list(lines or (line(),)),
            **fields}
    return await post(client, BASE, body)


async def approved(client: httpx.AsyncClient, *lines: Any, **fields: Any) -> str:
    """An order of less than 100,000 KES, approved by its one approver."""
    oid: str = (await created(client, *lines, **fields))["id"]
    await post(client, f"{BASE}/{oid}/submit", {})
    await post(client, f"{BASE}/{oid}/approve", {"role": "approver"}, **by("bob", "approver"))
    return oid


async def read(client: httpx.AsyncClient, path: str, position: int, **params: Any) -> Any:
    response = await client.get(path, params={"min_position": position, **params})
    assert response.status_code == 200, response.text
    return response.json(parse_float=Decimal)


async def test_an_order_goes_from_draft_to_received(client: httpx.AsyncClient, js: Any) -> None:
    # 10 x 10,000 + 16 % VAT = 116,000 KES: above 100,000, so finance must approve too.
    first = await created(client, line("cement", 10, 10000, tax_code="VAT16", tax_rate=16))
    oid = first["id"]
    assert first["version"] == 1
    await post(client, f"{BASE}/{oid}/add-line", line("sand", 5, 2000))
    await post(client, f"{BASE}/{oid}/update-line", {"line_no": 2, **line("sand", 4, 2000)})
    await post(client, f"{BASE}/{oid}/add-line", line("nails", 1, 50))
    removed = await post(client, f"{BASE}/{oid}/remove-line", {"line_no": 3})
    draft = await read(client, f"{BASE}/{oid}", removed["log_position"])
    assert (draft["status"], draft["number"], draft["line_count"]) == ("draft", f"PO-{YEAR}-000001", 2)
    assert (draft["net_amount"], draft["tax_amount"], draft["total_amount"]) == (108000, 16000, 124000)

    await post(client, f"{BASE}/{oid}/submit", {})
    first_approval = await post(client, f"{BASE}/{oid}/approve",
                                {"role": "approver"}, **by("bob", "approver"))
    halfway = await read(client, f"{BASE}/{oid}", first_approval["log_position"])
    assert halfway["status"] == "submitted"
    assert (halfway["required_roles"], halfway["pending_roles"]) == (["approver", "finance"], ["finance"])
    assert halfway["amount_kes"] == 124000
    done = await post(client, f"{BASE}/{oid}/approve", {"role": "finance"}, **by("carol", "finance"))
    view = await read(client, f"{BASE}/{oid}", done["log_position"])
    assert view["status"] == "approved" and view["pending_roles"] == []
    assert [(a["role"], a["approver_id"]) for a in view["approvals"]] == [
        ("approver", "bob"), ("finance", "carol")]

    today = business_date()
    for when in (today + timedelta(days=1), date(2026, 1, 1)):  # not yet, or before the order
        early = await client.post(f"{BASE}/{oid}/receive", json={
            "received_on": when.isoformat(), "lines": [{"line_no": 1, "accepted_quantity": 1}]})
        assert early.status_code == 422, early.text
        assert early.json()["errors"][0]["field"] == "body.received_on"
    partial = await post(client, f"{BASE}/{oid}/receive", {
        "receipt_id": "GRN-1", "received_on": today.isoformat(),
        "lines": [{"line_no": 1, "accepted_quantity": 6, "rejected_quantity": 1},
                  {"item_id": "sand", "accepted_quantity": 4}],
    })
    view = await read(client, f"{BASE}/{oid}", partial["log_position"])
    assert view["status"] == "partially_received"
    assert [(ln["quantity"], ln["accepted_quantity"], ln["rejected_quantity"], ln["open_quantity"])
            for ln in view["lines"]] == [(10, 6, 1, 4), (4, 4, 0, 0)]
    commitments = await read(client, "/api/v1/procurement/vendors/vendor-1/commitments",
                             partial["log_position"])
    # Line 1 still owes 4 of 10 of its 116,000; line 2 is in.
    assert commitments["commitments"] == [
        {"currency": "KES", "open_orders": 1, "ordered_amount": 124000, "open_amount": 46400}]

    rest = await post(client, f"{BASE}/{oid}/receive", {
        "receipt_id": "GRN-2", "lines": [{"line_no": 1, "accepted_quantity": 4}]})
    view = await read(client, f"{BASE}/{oid}", rest["log_position"])
    assert view["status"] == "received"
    assert [(ln["accepted_quantity"], ln["rejected_quantity"]) for ln in view["lines"]] == [(10, 1), (4, 0)]
    assert [(r["receipt_id"], r["received_on"], len(r["lines"])) for r in view["receipts"]] == [
        ("GRN-1", today.isoformat(), 2), ("GRN-2", today.isoformat(), 1)]
    assert view["version"] == rest["version"] == 11
    none_open = await read(client, "/api/v1/procurement/vendors/vendor-1/commitments",
                           rest["log_position"])
    assert none_open["commitments"] == []

    info = await js.stream_info("ERP")
    messages = await read_stream(js, info.state.messages)
    ours = [(m.subject, json.loads(m.data, parse_float=Decimal)) for m in messages
            if m.subject.startswith("erp.purchase_order.")]
    subjects = [subject for subject, _ in ours]
    assert subjects == [
        "erp.purchase_order.created", *["erp.purchase_order.lines_changed"] * 4,
        "erp.purchase_order.submitted", "erp.purchase_order.approved",
        "erp.purchase_order.approved", "erp.purchase_order.goods_received",
        "erp.purchase_order.goods_received", "erp.purchase_order.received",
    ]
    created_event = ours[0][1]
    assert created_event["data"]["number"] == f"PO-{YEAR}-000001"
    assert created_event["data"]["lines"][0]["total_amount"] == 116000
    goods = ours[8][1]["data"]
    assert (goods["receipt_id"], goods["vendor_id"]) == ("GRN-1", "vendor-1")
    assert [(g["line_no"], g["accepted_quantity"], g["rejected_quantity"]) for g in goods["lines"]] == [
        (1, 6, 1), (2, 4, 0)]
    received = ours[-1][1]
    assert received["event_type"] == "erp.purchase_order.received"
    assert received["tenant_id"] == "tenant-a"
    assert received["data"] == {"purchase_order_id": oid, "vendor_id": "vendor-1",
                                "total_amount": 124000, "currency": "KES"}

    closed = await post(client, f"{BASE}/{oid}/close", {})
    assert (await read(client, f"{BASE}/{oid}", closed["log_position"]))["status"] == "closed"


async def test_numbers_are_consecutive_per_tenant_also_when_created_at_once(
    client: httpx.AsyncClient,
) -> None:
    one = await created(client)
    two = await created(client, vendor_id="vendor-2")
    answers = await asyncio.gather(*(
        client.post(BASE, json={"vendor_id": f"v{i}"}) for i in range(10)
    ))
    assert [a.status_code for a in answers] == [201] * 10
    other = await post(client, BASE, {"vendor_id": "v"},
                       **as_user("tenant-b"))
    last = max(a.json()["log_position"] for a in answers)

    page = await read(client, BASE, last, limit=5)
    numbers = [o["number"] for o in page["items"]]
    while page["next_cursor"]:
        page = (await client.get(BASE, params={"cursor": page["next_cursor"], "limit": 5})).json()
        numbers += [o["number"] for o in page["items"]]
    assert sorted(numbers) == [f"PO-{YEAR}-{n:06d}" for n in range(1, 13)]
    by_id = {o["purchase_order_id"]: o["number"] for o in
             (await client.get(BASE, params={"limit": 200})).json()["items"]}
    assert (by_id[one["id"]], by_id[two["id"]]) == (f"PO-{YEAR}-000001", f"PO-{YEAR}-000002")
    theirs = await client.get(f"{BASE}/{other['id']}", params={"min_position": other["log_position"]},
                              headers=as_user("tenant-b"))
    assert theirs.json()["number"] == f"PO-{YEAR}-000001"  # each tenant has its own series
    vendor_2 = (await client.get(BASE, params={"vendor_id": "vendor-2"})).json()["items"]
    assert [o["number"] for o in vendor_2] == [f"PO-{YEAR}-000002"]
    drafts = (await client.get(BASE, params={"status": "draft", "limit": 200})).json()["items"]
    assert len(drafts) == 12


async def test_approval_rules_are_named(client: httpx.AsyncClient) -> None:
    oid = (await created(client))["id"]
    assert await refused(client, f"{BASE}/{oid}/approve", {"role": "approver"}, **by("bob", "approver")) \
        == (409, "NotAwaitingApproval")
    await post(client, f"{BASE}/{oid}/submit", {})
    assert await refused(client, f"{BASE}/{oid}/add-line", line("sand")) == (409, "NotDraft")
    assert await refused(client, f"{BASE}/{oid}/approve",
                         {"role": "approver"}, **by("user-1", "approver")) == (409, "SelfApproval")
    # 10,000 KES needs the approver only.
    assert await refused(client, f"{BASE}/{oid}/approve", {"role": "finance"}, **by("carol", "finance")) \
        == (409, "RoleNotRequired")
    assert await refused(client, f"{BASE}/{oid}/receive",
                         {"lines": [{"line_no": 1, "accepted_quantity": 1}]}) == (409, "NotApproved")
    rejected = await post(client, f"{BASE}/{oid}/reject", {"reason": "wrong vendor"}, **by("bob", "approver"))
    view = await read(client, f"{BASE}/{oid}", rejected["log_position"])
    assert (view["status"], view["rejection_reason"], view["required_roles"]) == (
        "draft", "wrong vendor", [])
    # a draft awaits no approval: that is the answer, not a missing role
    assert await refused(client, f"{BASE}/{oid}/reject", {"reason": "again"}, **by("bob", "approver")) == (
        409, "NotAwaitingApproval")

    empty = (await created(client))["id"]
    await post(client, f"{BASE}/{empty}/remove-line", {"line_no": 1})
    assert await refused(client, f"{BASE}/{empty}/submit", {}) == (409, "NoLines")
    cancelled = await post(client, f"{BASE}/{empty}/cancel", {"reason": "not needed"})
    assert (await read(client, f"{BASE}/{empty}", cancelled["log_position"]))["status"] == "cancelled"

    dollars = (await created(client, line(), currency="USD"))["id"]
    assert await refused(client, f"{BASE}/{dollars}/submit", {}) == (422, "ExchangeRateRequired")
    submitted = await post(client, f"{BASE}/{dollars}/submit", {"exchange_rate_to_kes": "129.5"})
    view = await read(client, f"{BASE}/{dollars}", submitted["log_position"])
    # 10,000 USD is 1,295,000 KES: every level of the default chain.
    assert (view["amount_kes"], view["required_roles"]) == (1295000, ["approver", "finance", "director"])


async def test_receipt_rules_are_named(client: httpx.AsyncClient) -> None:
    oid = await approved(client, line("cement", 10), line("sand", 5))
    over = await client.post(f"{BASE}/{oid}/receive",
                             json={"lines": [{"line_no": 1, "accepted_quantity": 11}]})
    assert (over.status_code, over.json()["rule"]) == (409, "OverReceipt")
    assert over.json()["errors"][0]["field"] == "body.lines"
    assert "at most 10" in over.json()["detail"]
    assert await refused(client, f"{BASE}/{oid}/receive",
                         {"lines": [{"line_no": 7, "accepted_quantity": 1}]}) == (422, "UnknownLine")
    both = await client.post(f"{BASE}/{oid}/receive",
                             json={"lines": [{"line_no": 1, "item_id": "sand", "accepted_quantity": 1}]})
    assert both.status_code == 422 and both.json()["errors"][0]["field"] == "body.lines.0"
    await post(client, f"{BASE}/{oid}/receive",
               {"receipt_id": "GRN-7", "lines": [{"item_id": "cement", "accepted_quantity": 10}]})
    assert await refused(client, f"{BASE}/{oid}/receive", {
        "receipt_id": "GRN-7", "lines": [{"item_id": "sand", "accepted_quantity": 1}]}) \
        == (409, "DuplicateReceipt")
    assert await refused(client, f"{BASE}/{oid}/cancel", {"reason": "late"}) == (409, "NotCancellable")
    assert await refused(client, f"{BASE}/{oid}/close", {}) == (422, "ReasonRequired")
    closed = await post(client, f"{BASE}/{oid}/close", {"reason": "sand no longer needed"})
    view = await read(client, f"{BASE}/{oid}", closed["log_position"])
    assert (view["status"], view["short_closed"], view["close_reason"]) == (
        "closed", True, "sand no longer needed")


async def test_bad_values_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    bad = await client.post(BASE, json={"vendor_id": "v",
                                        "lines": [line(quantity=0, unit_price="1.005")]})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"body.lines.0.quantity",
                                                          "body.lines.0.unit_price"}
    untaxed = await client.post(BASE, json={"vendor_id": "v",
                                            "lines": [line(), line(tax_rate=16)]})
    assert (untaxed.status_code, untaxed.json()["rule"]) == (422, "TaxCodeRequired")
    assert untaxed.json()["errors"][0]["field"] == "body.lines.1.tax_code"  # which line
    oid = (await created(client))["id"]
    unknown = await client.post(f"{BASE}/{oid}/update-line", json={"line_no": 9, **line()})
    assert (unknown.status_code, unknown.json()["rule"]) == (422, "UnknownLine")
    assert unknown.json()["errors"][0]["field"] == "body.line_no"
    past = await client.post(BASE, json={"vendor_id": "v",
                                         "required_by": "2000-01-01"})
    assert (past.status_code, past.json()["rule"]) == (422, "RequiredByInPast")
    extra = await client.post(f"{BASE}/{oid}/submit", json={"approver": "me"})
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "body.approver"
    huge = await client.post(BASE, json={"vendor_id": "v", "lines": [
        line(quantity="999999999999.999999", unit_price="9999999999999999.99")]})
    assert (huge.status_code, huge.json()["rule"]) == (422, "AmountTooLarge"), huge.text
    assert "quantity * unit_price" in huge.json()["detail"]
    for cursor in ("9" * 5000, "²"):
        paged = await client.get(BASE, params={"cursor": cursor})
        assert paged.status_code == 400 and paged.json()["errors"][0]["field"] == "query.cursor", paged.text


async def test_the_tenants_settings_set_the_chain_and_the_tolerance(client: httpx.AsyncClient) -> None:
    await post(client, "/api/v1/settings/approvals", {"levels": [{"min_amount": 0, "role": "manager"}]})
    await post(client, "/api/v1/settings/tolerances", {
        "over_receipt_percent": 10, "over_production_percent": 0, "over_consumption_percent": 0})
    oid = (await created(client, line("cement", 10, 50000)))["id"]  # 500,000 KES
    submitted = await post(client, f"{BASE}/{oid}/submit", {})
    view = await read(client, f"{BASE}/{oid}", submitted["log_position"])
    assert view["required_roles"] == ["manager"]
    await post(client, f"{BASE}/{oid}/approve", {"role": "manager"}, **by("bob", "manager"))
    over = await client.post(f"{BASE}/{oid}/receive",
                             json={"lines": [{"line_no": 1, "accepted_quantity": 12}]})
    assert over.json()["rule"] == "OverReceipt" and "at most 11" in over.json()["detail"]
    within = await post(client, f"{BASE}/{oid}/receive",
                        {"lines": [{"line_no": 1, "accepted_quantity": 11}]})
    view = await read(client, f"{BASE}/{oid}", within["log_position"])
    assert (view["status"], view["lines"][0]["accepted_quantity"]) == ("received", 11)
    assert len(view["receipts"]) == 1 and view["receipts"][0]["receipt_id"]  # made by the command


async def test_the_same_idempotency_key_answers_the_first_result(
    client: httpx.AsyncClient, service: Service
) -> None:
    body = {"vendor_id": "vendor-1", "lines": [line()]}
    first = await client.post(BASE, json=body, headers={"Idempotency-Key": "po-1"})
    again = await client.post(BASE, json=body, headers={"Idempotency-Key": "po-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    changed = await client.post(BASE, json={**body, "vendor_id": "vendor-2"},
                                headers={"Idempotency-Key": "po-1"})
    assert changed.status_code == 422
    assert changed.json()["errors"][0]["field"] == "header.Idempotency-Key"
    second = await created(client)  # the repeat took no number
    assert second["log_position"] > first.json()["log_position"]

    oid = first.json()["id"]
    await post(client, f"{BASE}/{oid}/submit", {})
    await post(client, f"{BASE}/{oid}/approve", {"role": "approver"}, **by("bob", "approver"))
    receipt = {"lines": [{"line_no": 1, "accepted_quantity": 3}]}  # no receipt_id: the key counts
    got = await client.post(f"{BASE}/{oid}/receive", json=receipt, headers={"Idempotency-Key": "gr-1"})
    got_again = await client.post(f"{BASE}/{oid}/receive", json=receipt,
                                  headers={"Idempotency-Key": "gr-1"})
    assert got.status_code == got_again.status_code == 200 and got.json() == got_again.json()
    view = await read(client, f"{BASE}/{oid}", got.json()["log_position"])
    assert view["lines"][0]["accepted_quantity"] == 3 and len(view["receipts"]) == 1
    numbers = (await read(client, BASE, second["log_position"]))["items"]
    assert sorted(o["number"] for o in numbers) == [f"PO-{YEAR}-000001", f"PO-{YEAR}-000002"]
    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM erp_events WHERE originator_id = %s", (oid,))
        assert (await cur.fetchone()) == (4,)  # created, submitted, approved, goods received


async def test_another_tenants_order_is_not_found(client: httpx.AsyncClient) -> None:
    oid = await approved(client)
    other = as_user("tenant-b", roles=("erp.superuser", "approver"))
    for action, body in (("approve", {"role": "approver"}),
                         ("receive", {"lines": [{"line_no": 1, "accepted_quantity": 1}]}),
                         ("cancel", {"reason": "mine now"})):
        response = await client.post(f"{BASE}/{oid}/{action}", json=body, headers=other)
        assert response.status_code == 404, action
    position = (await post(client, f"{BASE}/{oid}/receive",
                           {"lines": [{"line_no": 1, "accepted_quantity": 1}]}))["log_position"]
    params = {"min_position": position}
    assert (await client.get(f"{BASE}/{oid}", params=params, headers=other)).status_code == 404
    assert (await client.get(BASE, params=params, headers=other)).json()["items"] == []
    theirs = await client.get("/api/v1/procurement/vendors/vendor-1/commitments", params=params,
                              headers=other)
    assert theirs.json()["commitments"] == []
    ours = await read(client, "/api/v1/procurement/vendors/vendor-1/commitments", position)
    assert ours["commitments"] == [{"currency": "KES", "open_orders": 1, "ordered_amount": 10000,
                                    "open_amount": 9000}]


async def test_replaying_every_event_changes_no_read_model_row(
    client: httpx.AsyncClient, service: Service
) -> None:
    oid = (await created(client, line("cement", 10), line("sand", 5)))["id"]
    await post(client, f"{BASE}/{oid}/remove-line", {"line_no": 2})
    await post(client, f"{BASE}/{oid}/add-line", line("nails", 2, 300))
    await post(client, f"{BASE}/{oid}/submit", {})
    await post(client, f"{BASE}/{oid}/reject", {"reason": "split it"}, **by("bob", "approver"))
    await post(client, f"{BASE}/{oid}/submit", {})
    await post(client, f"{BASE}/{oid}/approve", {"role": "approver"}, **by("bob", "approver"))
    await post(client, f"{BASE}/{oid}/receive", {"receipt_id": "G1", "lines": [
        {"line_no": 1, "accepted_quantity": 4, "rejected_quantity": 1}]})
    last = await post(client, f"{BASE}/{oid}/receive", {"receipt_id": "G2", "lines": [
        {"item_id": "nails", "accepted_quantity": 2}]})
    before = await read(client, f"{BASE}/{oid}", last["log_position"])
    assert [(ln["line_no"], ln["item_id"]) for ln in before["lines"]] == [(1, "cement"), (2, "nails")]

    async with await psycopg.AsyncConnection.connect(service.endpoints.database_url,
                                                     autocommit=True) as conn:
        await conn.execute("UPDATE projection_checkpoints SET stream_seq = 0, log_position = 0 "
                           "WHERE name = 'purchase_orders'")
    # The next event finds the checkpoint moved: the projector starts again from the first.
    trigger = await created(client)
    await read(client, f"{BASE}/{trigger['id']}", trigger["log_position"])
    projector = next(r for r in service.projectors if r.projection.name == "purchase_orders")
    assert projector.resubscribes >= 1  # it did read everything again
    after = await read(client, f"{BASE}/{oid}", trigger["log_position"])
    assert after == before
    assert (after["status"], after["approvals"][0]["approver_id"], len(after["approvals"])) == (
        "partially_received", "bob", 1)
