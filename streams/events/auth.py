"""What we consume from the auth service: the `data` of its tenant and user announcements.

The integration guide names the events but not their fields; these are the fields the
ERP needs. Unknown fields are ignored, so the auth service may send more.
"""

from __future__ import annotations

import msgspec


class TenantAnnounced(msgspec.Struct, frozen=True, kw_only=True):
    """auth.tenant.created / auth.tenant.updated"""

    name: str
    status: str = "active"  # active | suspended


class UserAnnounced(msgspec.Struct, frozen=True, kw_only=True):
    """auth.user.created / auth.user.updated"""

    user_id: str
    email: str = ""
    name: str = ""
    active: bool = True
