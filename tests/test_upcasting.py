"""An event stored in an older version is upcast when read: the aggregate, the message the
relay publishes and a replay all see the current version."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from aggregates.tenant_settings import TenantSettings
from erp.cli_events import selected_messages
from erp.commands import Loader
from erp.eventstore import EventMetadata, close_store, stamp, store_for
from streams import envelope as env
from streams.events.tenancy import BusinessTermsConfigured
from streams.relay import to_message


def test_a_version_1_event_reads_as_version_2_everywhere(database_url: str) -> None:
    store = store_for(database_url, 1)
    try:
        tenant = TenantSettings.register("t-old")
        tenant.describe("Old Ltd", "active")
        tenant.configure_business_terms(currency="KES", payment_terms_days=45, notifications={},
                                        receiving_warehouse_id="w-1")
        stamp(tenant, EventMetadata("t-old", "c", "c"))
        store.save(tenant)
        with psycopg.connect(database_url, autocommit=True) as conn:  # as version 1 stored it
            row = conn.execute("SELECT notification_id, state FROM erp_events WHERE topic LIKE "
                               "'%BusinessTermsConfigured'").fetchone()
            assert row is not None
            position, state = row
            old: dict[str, Any] = json.loads(bytes(state))
            assert old.pop("class_version") == 2
            old.pop("receiving_warehouse_id")
            conn.execute("UPDATE erp_events SET state = %s WHERE notification_id = %s",
                         (json.dumps(old).encode(), position))

        settings = Loader(store, "t-old").settings()  # the aggregate
        assert (settings.payment_terms_days, settings.receiving_warehouse_id) == (45, None)

        notification = store.recorder.select_notifications(position, 1)[0]
        message = to_message(store, vars(notification) | {"notification_id": notification.id})  # the relay
        assert message.headers[env.SCHEMA_VERSION] == "2"
        published = env.decode(message.payload, BusinessTermsConfigured)
        assert (published.data.payment_terms_days, published.data.receiving_warehouse_id) == (45, None)

        replayed = list(selected_messages(store, position, position, set(), None, None))  # a replay
        assert [r.payload for r in replayed] == [message.payload]
    finally:
        close_store(store)
