"""A service of the platform following the ERP's won opportunities, e.g. to invoice them.

    ERP_NATS_URL=nats://127.0.0.1:4222 python examples/subscriber.py

Each event arrives once per durable consumer (redeliveries are skipped by event_id), typed
by the same Struct the ERP published it with.
"""

from __future__ import annotations

import asyncio
import os

from streams.envelope import Envelope
from streams.events.crm import OpportunityWon
from streams.subscriber import ErpSubscriber


async def follow(url: str, durable: str = "example-invoicing", stop_after: int | None = None) -> list[str]:
    seen: list[str] = []
    async with await ErpSubscriber.connect(url, durable) as erp:

        @erp.on("erp.opportunity.won", OpportunityWon)
        async def invoice(event: Envelope[OpportunityWon]) -> None:
            won = event.data
            print(f"{event.tenant_id}: invoice {won.amount} {won.currency} to {won.customer_id} "
                  f"for opportunity {won.opportunity_id} (event {event.event_id})")
            seen.append(str(won.opportunity_id))

        await erp.run(until=lambda: stop_after is not None and len(seen) >= stop_after)
    return seen


if __name__ == "__main__":
    asyncio.run(follow(os.environ.get("ERP_NATS_URL", "nats://127.0.0.1:4222")))
