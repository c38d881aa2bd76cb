"""A connection's life: register, connect under the per-user cap, heartbeat and activity, update and disconnect.

Part of :class:`connection_manager.service.ConnectionService`, which composes the parts
(see that module for why one object).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import msgspec
from pynamodb.exceptions import PynamoDBException

from connection_manager.bulk import APPLIED, SKIPPED
from connection_manager.dynamo import (
    dynamo_errors,
    is_condition_failure,
    update_or_current,
)
from connection_manager.errors import (
    ConflictError,
    ConnectionManagerError,
    UnavailableError,
)
from connection_manager.records import UNKNOWN_TIME, to_record
from connection_manager.rows import (
    CHECKED,
    CONNECTED,
    CURRENT,
    DISCONNECTED,
    NOT_CONNECTED,
    REMEMBERED,
    SOCKET_CLOSED,
    WRITTEN,
    RowAccess,
    Tally,
    live_index_actions,
    read_activity,
    stored_time,
)
from models.connection import (
    ConnectionModel,
    DisconnectReason,
    activity_bucket,
    epoch_seconds,
    parse_timestamp,
    shard_for,
)

log = logging.getLogger(__name__)


class Evicted(msgspec.Struct, frozen=True):
    """A connection the per-user cap has just DISCONNECTED: what closing its socket needs."""

    connection_id: str
    #: The management endpoint stored at ``$connect``; None for rows without one.
    endpoint: str | None = None


class Registration(msgspec.Struct, frozen=True):
    """What a ``$connect`` (or ``register_connection``) did: the row, and whom the cap evicted."""

    record: dict[str, Any]
    created: bool
    #: Connections of the user DISCONNECTED (reason ``evicted``) by this registration; their
    #: sockets were closed at the gateway (those it could not close are counted below).
    evicted: tuple[Evicted, ...] = ()
    not_closed: int = 0


def new_connection_row(
    connection_id: str,
    user_id: str,
    now: datetime,
    metadata: dict[str, Any] | None = None,
    model: type[ConnectionModel] = ConnectionModel,
    endpoint: str | None = None,
) -> ConnectionModel:
    """A fresh CONNECTED row, in the sparse index from its first write."""
    return model(
        connection_id,
        user_id=user_id,
        status=CONNECTED,
        created_at=now,
        last_active_at=now,
        updated_at=now,
        metadata=metadata,
        active_shard=shard_for(connection_id, model),
        active_bucket=activity_bucket(now),
        live_since=epoch_seconds(now),
        gateway_endpoint=endpoint,
    )


class AdminDisconnect(msgspec.Struct, frozen=True):
    """What an admin disconnect did: rows marked, and sockets API Gateway could not be made to close."""

    disconnected: int
    not_closed: int


class Lifecycle(RowAccess):
    """A connection's life: register, connect under the per-user cap, heartbeat and activity, update and disconnect."""

    # Writes -----------------------------------------------------------------------------

    def register_connection(
        self,
        connection_id: str,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a CONNECTED row. Returns ``(record, created)``.

        Repeating the same registration (same id and user, still CONNECTED) is a retry whose
        answer was lost and returns the stored row with ``created=False``; any other existing
        id is a conflict. ``endpoint`` is the socket's management endpoint (``$connect`` only).
        """
        row = new_connection_row(connection_id, user_id, self.clock(), metadata, self.model, endpoint)
        try:
            with dynamo_errors("register_connection"):
                row.save(condition=ConnectionModel.connection_id.does_not_exist())
            self.platform.count(connection_id, +1)
            # Messages this container receives next need no write until the interval passes.
            self.activity.remember(connection_id, row.last_active_at)
            return to_record(row), True
        except PynamoDBException as exc:
            if not is_condition_failure(exc):
                raise
        existing = self._get(connection_id, missing=ConflictError(f"Connection '{connection_id}' already exists"))
        if existing.user_id == user_id and existing.status == CONNECTED:
            return to_record(existing), False
        raise ConflictError(
            f"Connection '{connection_id}' already exists"
            + (" for another user" if existing.user_id != user_id else f" and is {existing.status}")
        )

    def connect(
        self,
        connection_id: str,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> Registration:
        """Register a connection, then hold its user to ``MAX_CONNECTIONS_PER_USER``.

        The registration is :meth:`register_connection`; the cap runs after it, a retry
        included (the first attempt may have stopped before its cap ran). The evicted rows'
        sockets are closed at the gateway, concurrently; the new connection itself, when a
        tie made it the oldest, is refused by its ``$connect`` instead.
        """
        record, created = self.register_connection(connection_id, user_id, metadata, endpoint)
        cap = self.settings.max_connections_per_user
        if not cap:
            return Registration(record, created)
        evicted = self._hold_user_to_cap(user_id, cap, connection_id, parse_timestamp(record["createdAt"]))
        for row in evicted:
            if row.connection_id == connection_id:
                record = to_record(row)  # it was the oldest after all: say so
        others = [row for row in evicted if row.connection_id != connection_id]
        not_closed = sum(not closed for closed in self._fan_out(others, self._close_socket)) if others else 0
        return Registration(
            record,
            created,
            tuple(Evicted(row.connection_id, row.gateway_endpoint) for row in evicted),
            not_closed,
        )

    def _hold_user_to_cap(
        self, user_id: str, cap: int, registered_id: str, registered_at: datetime
    ) -> list[ConnectionModel]:
        """DISCONNECT the user's CONNECTED rows beyond the ``cap`` newest (reason ``evicted``).

        Every caller orders rows the same way, by ``(createdAt, connectionId)``, so two
        registrations racing for one user never disagree on which rows are the newest:
        a row is evicted only when ``cap`` rows newer than it were seen CONNECTED, which
        the ``cap`` newest of the user can never be. ``UserIdIndex`` projects ``createdAt``,
        so this is one Query and no read of the table. The index is eventually consistent:
        the row just written is added to what it answers, and rows it does not show yet are
        left to the next registration of the user (README, "Per-user cap").

        Never fails the registration: a read or write failing after retries is logged, and
        the next registration of the user evicts what this one could not.
        """
        try:
            with dynamo_errors("per-user cap"):
                seen = {
                    row.connection_id: row.created_at
                    for row in self.model.user_index.query(
                        user_id,
                        range_key_condition=ConnectionModel.status == CONNECTED,
                        attributes_to_get=["connectionId", "createdAt"],
                    )
                }
        except ConnectionManagerError as exc:
            log.warning("per-user cap of %s not applied: %s", user_id, exc.message)
            return []
        seen[registered_id] = registered_at
        if len(seen) <= cap:
            return []
        # A row without a readable createdAt counts as the oldest, as its record says (UNKNOWN_TIME).
        oldest_first = sorted(seen, key=lambda cid: (seen[cid] or UNKNOWN_TIME, cid))
        victims = oldest_first[: len(oldest_first) - cap]

        def evict(connection_id: str) -> ConnectionModel | None:
            try:
                return self._disconnect_if_connected(connection_id, DisconnectReason.EVICTED)
            except ConnectionManagerError as exc:
                log.warning("could not evict %s of user %s: %s", connection_id, user_id, exc.message)
                return None

        # None: already DISCONNECTED (by its client, another registration) or failed.
        return [row for row in self._fan_out(victims, evict) if row is not None]

    def heartbeat(self, connection_id: str) -> dict[str, Any]:
        """Refresh ``lastActiveAt`` of a CONNECTED row; a DISCONNECTED one stays as it is (409).

        The explicit action always writes, whatever the activity interval.
        """
        now = self.clock()
        row = self.model(connection_id)
        actions = [
            ConnectionModel.last_active_at.set(now),
            ConnectionModel.updated_at.set(now),
            *live_index_actions(connection_id, now, self.model),
        ]
        if self._conditional_update(
            row, actions, ConnectionModel.connection_id.exists() & (ConnectionModel.status == CONNECTED), "heartbeat"
        ):
            self.activity.remember(connection_id, now)
            return to_record(row)
        existing = self._get(connection_id)
        raise ConflictError(f"Connection '{connection_id}' is {existing.status}; a heartbeat cannot revive it")

    def record_activity(self, connection_id: str) -> str:
        """A WebSocket message: move ``lastActiveAt`` at most once per activity interval.

        Returns WRITTEN, REMEMBERED, CHECKED, CURRENT or NOT_CONNECTED, cheapest first:

        1. this process's memory of a time the table holds: within the interval, no request;
        2. else an eventually consistent read of the row, 0.5 read units (a tenth of a
           write's price): across a Lambda fleet a container has rarely seen the connection,
           and a conditional write that fails would cost a whole write unit to say the same;
        3. only a stored time older than the interval sends the conditional write, which
           still decides (two containers may both have read the old time).

        Guarantee: the stored time is never older than ``interval`` seconds before any
        message. An eventually consistent read can only be behind, never ahead: a stale
        answer costs a write (refused if the row is recent), never a missed one.
        """
        now = self.clock()
        interval = self.settings.activity_write_interval_seconds
        if not interval:
            return self.write_activity(connection_id, now, None)
        threshold = now - timedelta(seconds=interval)
        known = self.activity.get(connection_id)
        if known is not None and known > threshold:
            return REMEMBERED
        with dynamo_errors("record_activity"):
            connected, stored = read_activity(self.model, connection_id)
        if not connected:
            self.activity.forget(connection_id)
            return NOT_CONNECTED
        if stored is not None and stored > threshold:
            self.activity.remember(connection_id, stored)
            return CHECKED
        return self.write_activity(connection_id, now, threshold)

    def write_activity(self, connection_id: str, now: datetime, threshold: datetime | None) -> str:
        """The conditional write of a message's activity: only if ``lastActiveAt <= threshold``.

        Nothing is read back on success (no ``ReturnValues``); a failed condition returns the
        stored row (``ALL_OLD``), free, so the next messages here know the time too."""
        condition = ConnectionModel.status == CONNECTED
        if threshold is not None:
            condition &= ConnectionModel.last_active_at.does_not_exist() | (
                ConnectionModel.last_active_at <= threshold
            )
        actions = [ConnectionModel.last_active_at.set(now), *live_index_actions(connection_id, now, self.model)]
        with dynamo_errors("record_activity"):
            applied, stored = update_or_current(self.model(connection_id), actions, condition, return_values=None)
        if applied:
            self.activity.remember(connection_id, now)
            return WRITTEN
        if stored is None or stored.get("status", {}).get("S") != CONNECTED:
            self.activity.forget(connection_id)
            return NOT_CONNECTED
        last = stored_time(stored)
        if last is not None:
            self.activity.remember(connection_id, last)
        return CURRENT

    def update_connection_status(self, connection_id: str, status: str) -> dict[str, Any]:
        """Set a status. Setting the status a row already has changes nothing and returns it."""
        if status == DISCONNECTED:
            return self.admin_disconnect(connection_id)[0]
        now = self.clock()
        row = self.model(connection_id)
        actions = [
            ConnectionModel.status.set(CONNECTED),
            ConnectionModel.last_active_at.set(now),
            ConnectionModel.updated_at.set(now),
            *live_index_actions(connection_id, now, self.model),
            ConnectionModel.disconnected_at.remove(),
            ConnectionModel.disconnect_reason.remove(),
            ConnectionModel.expires_at.remove(),
        ]
        condition = ConnectionModel.connection_id.exists() & (ConnectionModel.status != CONNECTED)
        if self._conditional_update(row, actions, condition, "update_connection_status"):
            self.platform.count(connection_id, +1)
            return to_record(row)
        return self.get_connection(connection_id)  # already CONNECTED, or 404

    def disconnect(self, connection_id: str, reason: DisconnectReason) -> dict[str, Any] | None:
        """Mark one connection DISCONNECTED; None when it was already, or never existed.

        One conditional write and no read: a repeated or unknown $disconnect needs no answer
        beyond "nothing changed".
        """
        row = self._disconnect_if_connected(connection_id, reason)
        return to_record(row) if row is not None else None

    def admin_disconnect(self, connection_id: str) -> tuple[dict[str, Any], int]:
        """Mark one connection DISCONNECTED (reason ``admin``) and close its socket at API Gateway.

        Returns ``(record, sockets not closed)``. The row is marked whatever the gateway does.
        A row already DISCONNECTED by an admin, the sweep or another tool has its close sent
        again (410 Gone is success), so repeating the request retries a close that failed;
        rows whose socket is known closed (``client``, ``gone``) are left alone. 404 if absent.
        """
        row = self._disconnect_if_connected(connection_id, DisconnectReason.ADMIN)
        if row is None:
            row = self._get(connection_id)  # unchanged, or 404
            if row.status == CONNECTED or row.disconnect_reason in SOCKET_CLOSED:
                return to_record(row), 0
        return to_record(row), 0 if self._close_socket(row) else 1

    def disconnect_user(self, user_id: str) -> int:
        """Disconnect every live connection of a user (reason ``admin``); returns how many."""
        return self.admin_disconnect_user(user_id).disconnected

    def admin_disconnect_user(self, user_id: str) -> AdminDisconnect:
        """Disconnect every live connection of a user (reason ``admin``) and close their sockets.

        Each connection's row write and then its DeleteConnection run in one task of the
        bounded writer, so a user with thousands of sockets is closed ``sweep_concurrency``
        at a time, never one by one and never all at once.
        """
        not_closed = Tally()

        def disconnect(connection_id: str) -> str:
            row = self._disconnect_if_connected(connection_id, DisconnectReason.ADMIN)
            if row is None:
                return SKIPPED
            if not self._close_socket(row):
                not_closed.add("socket")
            return APPLIED

        with dynamo_errors("disconnect_user"):
            ids = (
                row.connection_id
                for row in self.model.user_index.query(
                    user_id, range_key_condition=ConnectionModel.status == CONNECTED, attributes_to_get=["connectionId"]
                )
            )
            outcome = self._write_all(ids, disconnect)
        if outcome.failed:
            raise UnavailableError(
                f"{outcome.failed} of the user's connections could not be disconnected after retries "
                f"({outcome.applied} were); try again"
            )
        return AdminDisconnect(outcome.applied, not_closed["socket"])
