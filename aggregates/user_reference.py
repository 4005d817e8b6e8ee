"""A user of a tenant as the auth service knows them: the ERP keeps a reference (name,
email, active) to show who requested or approved what. It never manages users."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from aggregates.errors import InvalidValue

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:erp-service:user-reference")


class InvalidUserReference(InvalidValue):
    pass


def _checked(user_id: str, email: str) -> None:
    if not user_id.strip():
        raise InvalidUserReference("a user needs an id", field="user_id")
    if email and "@" not in email:
        raise InvalidUserReference(f"{email!r} is not an email address", field="email")


class UserReference(Aggregate):
    @staticmethod
    def id_for(tenant_id: str, user_id: str) -> UUID:
        return uuid5(_NAMESPACE, f"{tenant_id}\n{user_id}")

    @classmethod
    def create_id(cls, tenant_id: str, user_id: str, **_: object) -> UUID:
        return cls.id_for(tenant_id, user_id)

    @classmethod
    def reference(cls, tenant_id: str, user_id: str, email: str, name: str, active: bool) -> UserReference:
        _checked(user_id, email)
        return cls(tenant_id=tenant_id, user_id=user_id, email=email, name=name, active=active)

    @event("Referenced")
    def __init__(self, tenant_id: str, user_id: str, email: str, name: str, active: bool) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.email = email
        self.name = name
        self.active = active

    def sync(self, email: str, name: str, active: bool) -> bool:
        """Takes the auth service's current identity fields; answers whether any changed."""
        _checked(self.user_id, email)
        if (email, name, active) == (self.email, self.name, self.active):
            return False
        self._synced(user_id=self.user_id, email=email, name=name, active=active)
        return True

    @event("Synced")
    def _synced(self, user_id: str, email: str, name: str, active: bool) -> None:
        self.email = email
        self.name = name
        self.active = active
