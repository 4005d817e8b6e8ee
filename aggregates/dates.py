"""The business date: documents are dated in East Africa Time (UTC+3, no daylight saving),
where the platform's businesses are, whatever the server's time zone (containers run in UTC:
between 00:00 and 03:00 in Nairobi the server's date is still yesterday)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

EAST_AFRICA_TIME = timezone(timedelta(hours=3), "EAT")


def business_date(at: datetime | None = None) -> date:
    """The date in East Africa Time at `at` (an aware datetime; now if None)."""
    return (at or datetime.now(UTC)).astimezone(EAST_AFRICA_TIME).date()
