"""Every platform service the ERP calls, built in one place for the composition root:
one typed client per service, on one shared HTTP client, under one policy."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import httpx

from integrations.inventory import Inventory
from integrations.iot import Iot
from integrations.logistics import Logistics
from integrations.notifications import Notifications
from integrations.policy import PeerHealth, Policy
from integrations.pos import Pos
from integrations.projects import Projects
from integrations.transport import PeerConfig, PeerTransport
from integrations.treasury import Treasury

PEER_NAMES = ("treasury", "inventory", "logistics", "pos", "iot", "projects", "notifications")


class Peers:
    def __init__(self, configs: Iterable[PeerConfig], policy: Policy | None = None, *,
                 http: httpx.AsyncClient | None = None) -> None:
        by_name = {config.name: config for config in configs}
        missing = [name for name in PEER_NAMES if name not in by_name]
        if missing:
            raise ValueError(f"no configuration for the peers {', '.join(missing)}")
        self.policy = policy or Policy()
        self.transport = PeerTransport(self.policy, http)
        self.treasury = Treasury(self.transport.peer(by_name["treasury"]))
        self.inventory = Inventory(self.transport.peer(by_name["inventory"]))
        self.logistics = Logistics(self.transport.peer(by_name["logistics"]))
        self.pos = Pos(self.transport.peer(by_name["pos"]))
        self.iot = Iot(self.transport.peer(by_name["iot"]))
        self.projects = Projects(self.transport.peer(by_name["projects"]))
        self.notifications = Notifications(self.transport.peer(by_name["notifications"]))

    def health(self) -> list[PeerHealth]:
        return self.policy.health()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Peers:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()
