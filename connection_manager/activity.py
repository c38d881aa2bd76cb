"""What this process last knew of each connection's stored ``lastActiveAt``.

A WebSocket message must move ``lastActiveAt`` only once per activity interval. The table
decides (a conditional write), but asking it costs a write unit even when the answer is
"not yet". This bounded memory, per process (a Lambda container), answers most messages
with no request at all: it holds, per connection, a time that the table is known to have
stored (our own write, or the stored value DynamoDB returned with a failed condition).
``lastActiveAt`` only moves forward, so the stored value is at least that time, which is
all the staleness guarantee needs.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime


class ActivityMemory:
    """A thread-safe LRU map ``connectionId -> datetime`` holding at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._times: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._times)

    def get(self, connection_id: str) -> datetime | None:
        with self._lock:
            value = self._times.get(connection_id)
            if value is not None:
                self._times.move_to_end(connection_id)
            return value

    def remember(self, connection_id: str, stored: datetime) -> None:
        """Record that the table holds ``lastActiveAt >= stored`` (never moves an entry back)."""
        if self.size <= 0:
            return
        with self._lock:
            known = self._times.get(connection_id)
            self._times[connection_id] = stored if known is None or stored > known else known
            self._times.move_to_end(connection_id)
            while len(self._times) > self.size:
                self._times.popitem(last=False)

    def forget(self, connection_id: str) -> None:
        with self._lock:
            self._times.pop(connection_id, None)
