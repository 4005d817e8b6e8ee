"""Document numbers, unique and gap-free per tenant, series and year (PO-2026-000001).

A series is an aggregate of its own, saved in the same transaction as the document that
takes its next number: both are stored or neither, so no number is lost or used twice;
two documents racing for a number clash on the series' version and one retries.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:document-series")


class DocumentSeries(Aggregate):
    @staticmethod
    def id_for(tenant_id: str, prefix: str, year: int) -> UUID:
        return uuid5(_NAMESPACE, f"{tenant_id}\n{prefix}\n{year}")

    @classmethod
    def create_id(cls, tenant_id: str, prefix: str, year: int) -> UUID:
        return cls.id_for(tenant_id, prefix, year)

    @event("Started")
    def __init__(self, tenant_id: str, prefix: str, year: int) -> None:
        self.tenant_id = tenant_id
        self.prefix = prefix
        self.year = year
        self.last = 0

    def issue(self) -> str:
        """The next number of the series, e.g. PO-2026-000042."""
        self._issued(number=self.last + 1)
        return f"{self.prefix}-{self.year}-{self.last:06d}"

    @event("NumberIssued")
    def _issued(self, number: int) -> None:
        self.last = number
