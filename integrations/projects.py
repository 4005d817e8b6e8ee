"""Projects: budgets are the projects service's; we book expenses against a project and
read its budget.

The guide names the endpoints but not their fields: every `Struct` here is our proposal.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID

import msgspec

from integrations.transport import Peer, segment


class ProjectExpenseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: an expense claim charged to a project (`erp.expense.created`)."""

    expense_claim_id: UUID
    category: str
    amount: Decimal
    currency: str
    incurred_on: date
    employee_id: str | None = None
    description: str = ""


class ProjectExpense(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: the projects service's answer."""

    expense_id: str
    status: str | None = None


class ProjectBudget(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal, after `projects.budget.updated`."""

    budget: Decimal
    spent: Decimal
    currency: str
    project_id: str | None = None
    remaining: Decimal | None = None


class Projects:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def record_expense(self, tenant_id: str, project_id: str, expense: ProjectExpenseRequest, *,
                             idempotency_key: str, correlation_id: str | None = None) -> ProjectExpense:
        return await self.peer.post("record_expense", f"/api/v1/projects/{segment(project_id)}/expenses",
                                    expense, ProjectExpense, tenant_id=tenant_id,
                                    idempotency_key=idempotency_key, correlation_id=correlation_id)

    async def budget(self, tenant_id: str, project_id: str, *,
                     correlation_id: str | None = None) -> ProjectBudget:
        return await self.peer.get("budget", f"/api/v1/projects/{segment(project_id)}/budget", ProjectBudget,
                                   tenant_id=tenant_id, correlation_id=correlation_id)
