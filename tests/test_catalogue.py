"""The event catalogue other teams read is generated from the code, and matches it."""

from __future__ import annotations

import json

import httpx

from streams.asyncapi import SCHEMAS, document, rendered
from streams.catalogue import PUBLICATIONS


def test_the_checked_in_catalogue_is_what_the_code_generates() -> None:
    for path, content in rendered().items():
        assert path.exists(), f"{path} is missing: run python -m streams.asyncapi"
        assert path.read_text() == content, f"{path} differs from the code: run python -m streams.asyncapi"
    extra = {p.name for p in SCHEMAS.glob("*.json")} - {f"{p.subject}.json" for p in PUBLICATIONS.values()}
    assert not extra, f"schemas of events we no longer publish: {extra}"


def test_every_published_subject_is_a_channel_with_the_guides_envelope() -> None:
    catalogue = document()
    assert catalogue["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in catalogue["channels"].values()}
    assert addresses == {p.subject for p in PUBLICATIONS.values()}
    won = catalogue["components"]["messages"]["erp_opportunity_won"]["payload"]
    envelope = catalogue["components"]["schemas"][won["$ref"].rsplit("/", 1)[1]]
    assert set(envelope["required"]) == {"event_id", "event_type", "tenant_id", "timestamp", "data"}
    data = catalogue["components"]["schemas"][envelope["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
    assert set(data["properties"]) == {"opportunity_id", "customer_id", "amount", "currency"}


async def test_the_catalogue_is_served(client: httpx.AsyncClient) -> None:
    served = await client.get("/asyncapi.json", headers={"Authorization": ""})
    assert served.status_code == 200
    assert json.loads(served.text)["channels"].keys() == document()["channels"].keys()
