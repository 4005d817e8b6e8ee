"""Treasury: invoices, bills, payments and expenses are treasury's; we ask it to make them.

The guide names the endpoints but not their fields: every `Struct` here is our proposal,
the least an ERP must tell treasury and read back from it.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID

import msgspec

from integrations.transport import Peer


class InvoiceLine(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal (the guide lists no fields)."""

    description: str
    quantity: Decimal
    unit_price: Decimal
    tax_code: str | None = None


class InvoiceRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: the invoice of a won opportunity (`erp.opportunity.won`)."""

    customer_id: str
    opportunity_id: UUID
    amount: Decimal
    currency: str
    lines: list[InvoiceLine] = []
    due_date: date | None = None


class Invoice(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: treasury's answer; `invoice_id` is what we keep."""

    invoice_id: str
    status: str | None = None


class BillRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: the bill of received goods (`erp.purchase_order.received`)."""

    purchase_order_id: UUID
    vendor_id: str
    total_amount: Decimal
    currency: str
    reference: str | None = None  # the purchase order's number, e.g. PO-2026-000042


class Bill(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: treasury's answer."""

    bill_id: str
    status: str | None = None


class PayeeLine(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: one employee's net pay."""

    employee_id: str
    amount: Decimal


class PayrollPaymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: paying a processed payroll run (`erp.payroll.processed`)."""

    payroll_id: UUID
    period: str  # YYYY-MM
    amount: Decimal
    currency: str
    payees: list[PayeeLine]


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: treasury's answer."""

    payment_id: str
    status: str | None = None


class ExpenseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: an approved expense claim (`erp.expense.approved`)."""

    expense_claim_id: UUID
    employee_id: str
    category: str
    amount: Decimal
    currency: str
    incurred_on: date
    description: str = ""


class Expense(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: treasury's answer."""

    expense_id: str
    status: str | None = None


class BankAccount(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: what we need to show and choose an account."""

    account_id: str
    name: str
    currency: str
    bank: str | None = None


class TaxCode(msgspec.Struct, frozen=True, kw_only=True):
    """Our proposal: a tax code and its rate in percent (e.g. VAT 16)."""

    code: str
    rate: Decimal
    name: str | None = None


class Treasury:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def create_invoice(self, tenant_id: str, invoice: InvoiceRequest, *, idempotency_key: str,
                             correlation_id: str | None = None) -> Invoice:
        return await self.peer.post("create_invoice", "/api/v1/treasury/invoices", invoice, Invoice,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def create_bill(self, tenant_id: str, bill: BillRequest, *, idempotency_key: str,
                          correlation_id: str | None = None) -> Bill:
        return await self.peer.post("create_bill", "/api/v1/treasury/bills", bill, Bill,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def pay_payroll(self, tenant_id: str, payment: PayrollPaymentRequest, *, idempotency_key: str,
                          correlation_id: str | None = None) -> Payment:
        return await self.peer.post("pay_payroll", "/api/v1/treasury/payments", payment, Payment,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def record_expense(self, tenant_id: str, expense: ExpenseRequest, *, idempotency_key: str,
                             correlation_id: str | None = None) -> Expense:
        return await self.peer.post("record_expense", "/api/v1/treasury/expenses", expense, Expense,
                                    tenant_id=tenant_id, idempotency_key=idempotency_key,
                                    correlation_id=correlation_id)

    async def bank_accounts(self, tenant_id: str, *, correlation_id: str | None = None) -> list[BankAccount]:
        return await self.peer.get_all("bank_accounts", "/api/v1/treasury/accounts", BankAccount,
                                       tenant_id=tenant_id, correlation_id=correlation_id)

    async def tax_codes(self, tenant_id: str, *, correlation_id: str | None = None) -> list[TaxCode]:
        return await self.peer.get_all("tax_codes", "/api/v1/treasury/tax-codes", TaxCode,
                                       tenant_id=tenant_id, correlation_id=correlation_id)
