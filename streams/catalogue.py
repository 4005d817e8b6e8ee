"""Every event we publish: its subject and the typed payload of its `data`.

Each business module lists its publications in `streams/events/<module>.py`; the
relay and the projectors look them up here.
"""

from __future__ import annotations

import msgspec

from streams.events import crm, hrm, manufacturing, procurement, tenancy
from streams.events.base import Publication

PUBLICATIONS: dict[type, Publication] = {
    **crm.PUBLICATIONS,
    **hrm.PUBLICATIONS,
    **manufacturing.PUBLICATIONS,
    **procurement.PUBLICATIONS,
    **tenancy.PUBLICATIONS,
}

PAYLOADS_BY_SUBJECT: dict[str, type[msgspec.Struct]] = {
    p.subject: p.payload for p in PUBLICATIONS.values()
}
