"""IoT: devices and their readings are the IoT service's; we read a device's telemetry
(production lines, cold rooms).

The guide names the endpoint but not its fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from integrations.transport import Peer, segment


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal. A measurement, not money: a float is fine."""

    metric: str
    value: float
    at: datetime
    unit: str | None = None


class Telemetry(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal."""

    readings: list[Reading]
    device_id: str | None = None


class Iot:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def telemetry(self, tenant_id: str, device_id: str, *, since: datetime | None = None,
                        metric: str | None = None, correlation_id: str | None = None) -> Telemetry:
        params = {"since": since.isoformat()} if since else {}
        if metric:
            params["metric"] = metric
        return await self.peer.get("telemetry", f"/api/v1/iot/devices/{segment(device_id)}/telemetry",
                                   Telemetry, tenant_id=tenant_id, correlation_id=correlation_id,
                                   params=params or None)
