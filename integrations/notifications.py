"""Notifications: the ERP never emails or texts anyone itself; it asks the notifications
service, which holds the templates and the providers.

The guide names the endpoint but not its fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from integrations.transport import Peer


class MessageRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: a template, its values, and who gets it on which channel."""

    channel: Literal["email", "sms", "push", "in_app"]
    recipients: list[str]  # user ids as the auth service knows them
    template: str  # e.g. "payroll.payslip_ready"
    data: dict[str, str] = {}


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: the notifications service's answer."""

    message_id: str
    status: str | None = None


class Notifications:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def send_message(self, tenant_id: str, message: MessageRequest, *, idempotency_key: str,
                           correlation_id: str | None = None) -> Message:
        return await self.peer.post("send_message", "/api/v1/notifications/messages", message, Message,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)
