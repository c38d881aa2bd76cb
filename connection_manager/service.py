"""The operations of the contract as one object, composed of one part per job.

The parts are :mod:`~connection_manager.reads`, :mod:`~connection_manager.lifecycle`,
:mod:`~connection_manager.sweep` and :mod:`~connection_manager.upkeep`, all on the row
writes of :mod:`~connection_manager.rows`. They share one state (settings, clock, the
table's model, the gateway, this process's activity memory), so they are composed here as
one class rather than wired as five objects that would each need all of it: every front
door (handler, operations, Flask app, CLI) keeps calling one narrow object.

Every write that correctness depends on is a single conditional request, so concurrent
writers (a heartbeat racing the sweep, two sweeps, a retry whose answer was lost) settle
in DynamoDB rather than in a read-modify-write window here.
"""
from __future__ import annotations

from typing import Any

from connection_manager.activity import ActivityMemory
from connection_manager.clock import Clock, TimeLeft, utc_now
from connection_manager.config import Settings
from connection_manager.gateway import Gateway
from connection_manager.lifecycle import (
    AdminDisconnect,
    Evicted,
    Lifecycle,
    Registration,
    new_connection_row,
)
from connection_manager.dynamo import dynamo_errors
from connection_manager.platform_stats import PlatformStats
from connection_manager.presence import Consumed, Presence
from connection_manager.presence_bus import EventBus
from connection_manager.reads import (
    FILTER_READ_BUDGET,
    RESPONSE_BUDGET_BYTES,
    ConnectionFilter,
    Reads,
)
from connection_manager.rows import (
    CHECKED,
    CONNECTED,
    CURRENT,
    DISCONNECTED,
    NOT_CONNECTED,
    REMEMBERED,
    WRITTEN,
)
from connection_manager.signing_key import SigningKeys
from connection_manager.sweep import Sweep, SweepResult
from connection_manager.upkeep import Upkeep
from connection_manager.schemas import UserPresence
from models.connection import ConnectionModel, format_timestamp, model_for

__all__ = [
    "AdminDisconnect", "CHECKED", "CONNECTED", "CURRENT", "ConnectionFilter", "ConnectionService", "DISCONNECTED",
    "Evicted", "FILTER_READ_BUDGET", "NOT_CONNECTED", "REMEMBERED", "RESPONSE_BUDGET_BYTES", "Registration",
    "SweepResult", "TimeLeft", "WRITTEN", "new_connection_row",
]


class ConnectionService(Reads, Lifecycle, Sweep, Upkeep):
    """The operations of the contract; one instance per process is enough.

    ``model`` is the table's model class; without one the service gets a class of its own
    for ``settings``' table, so building a service never rebinds one already in use.
    Conditions and update actions name attributes through ``ConnectionModel``: they are
    attribute paths, the same on every table's class.
    """


    def __init__(
        self,
        settings: Settings,
        clock: Clock = utc_now,
        model: type[ConnectionModel] | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.model = model if model is not None else model_for(settings)
        self.activity = ActivityMemory(settings.activity_memory_size)
        #: Live counters, snapshot and sweep history, in the same table under reserved keys.
        self.platform = PlatformStats(self.model, settings.sweep_concurrency)
        # Building it costs nothing: boto3 is imported on the first gateway call.
        self.gateway = gateway if gateway is not None else Gateway(settings)
        self.signing_keys = SigningKeys(settings)
        bus = EventBus(settings.presence_event_bus, settings.region) if settings.presence_event_bus else None
        self.presence = Presence(self.platform.records, settings.table_name, bus, clock)

    def consume_stream(self, batch: list[Any]) -> Consumed:
        """Presence from a batch of the table's stream records (nothing when presence is off)."""
        return self.presence.consume(batch)

    def get_user_presence(self, user_id: str) -> UserPresence:
        """Online or not from the user's CONNECTED rows: as many items read as they have."""
        with dynamo_errors("get_user_presence"):
            ids = [row.connection_id for row in
                   self.model.user_index.query(user_id, range_key_condition=ConnectionModel.status == CONNECTED)]
            rows = [row for row in self.model.batch_get(ids) if row.status == CONNECTED] if ids else []
            seen = max((row.last_active_at or row.created_at for row in rows), default=None)
            last = format_timestamp(seen) if seen is not None else self.presence.last_seen(user_id)
        return UserPresence(user_id=user_id, online=bool(rows), connections=len(rows), last_seen_at=last)
