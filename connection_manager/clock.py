"""Time as a dependency, so tests and races can pin "now" instead of sleeping."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

Clock = Callable[[], datetime]
#: Milliseconds of Lambda time left; None when the caller has no deadline.
TimeLeft = Callable[[], int] | None


def utc_now() -> datetime:
    """The production clock: timezone-aware UTC."""
    return datetime.now(timezone.utc)


class FixedClock:
    """A clock that only moves when told to; used by tests and the demo seeder."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware start")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now = self.now + timedelta(**delta)
        return self.now
