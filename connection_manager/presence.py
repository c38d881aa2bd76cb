"""Presence: consume the table's stream, keep who is online, publish each change once.

Every record that changes a connection (:mod:`connection_manager.presence_events`) is
applied to its user's presence item (:func:`models.platform.presence_key`): the set of
the user's open connection ids, the last sequence number applied per open connection, and
the events the change owes the bus. The item is written with a condition on its version, so
two consumers applying records of the same user (two devices connecting at once, their
records on two shards) are serialized by DynamoDB: the second sees the first's set, and
only one of them finds the set empty and says ``User Online``.

* **Exactly once.** A record whose sequence number is not above the one stored for its
  connection was applied before (a Lambda retry, a record delivered twice, the stream
  replayed from its start): it changes nothing and owes nothing new. A closed connection's
  last sequence number moves from the user's item to a mark of its own
  (:func:`models.platform.closed_key`), which DynamoDB's TTL removes after 25 hours (the
  stream keeps records 24), so the user's item holds only their open connections and a
  change writes a small item however often the user reconnected today.
* **Nothing lost.** A change and the events it owes are one write; the events are cleared
  from the item only once ``PutEvents`` took them. A record whose events were not all
  published is given back to Lambda (``batchItemFailures``); its retry finds the change
  applied and publishes what is still owed, under the same ``eventId``.

"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PynamoDBException

from connection_manager.clock import Clock
from connection_manager.dynamo import is_condition_failure
from connection_manager.presence_bus import Event, EventBus
from connection_manager.presence_events import (
    DETAIL_TYPES,
    Change,
    Unusable,
    change_of,
    connection_event,
    event_id,
    user_event,
)
from models.platform import PlatformRecord, closed_key, presence_key

log = logging.getLogger(__name__)

#: How long a closed connection's mark is kept: longer than the stream keeps records.
KEEP_CLOSED = timedelta(hours=25)
#: Tries of one write that lose to another consumer's write of the same user.
CONTENTION_ATTEMPTS = 8


@dataclass
class Consumed:
    """What one batch did; ``failed`` is the sequence number Lambda must retry from."""

    changes: int = 0
    duplicates: int = 0
    published: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: str | None = None
    problem: str | None = None


@dataclass
class _Item:
    user_id: str
    members: set[str]
    sequences: dict[str, int]  # open connection -> last sequence number applied
    last_seen_at: str | None
    owed: list[Event]
    version: int | None  # None: not stored yet


class Presence:
    """Presence of the users of one table; ``bus`` None means presence is off."""

    def __init__(self, records: type[PlatformRecord], table: str, bus: EventBus | None, clock: Clock) -> None:
        self.records = records
        self.table = table
        self.bus = bus
        self.clock = clock

    def consume(self, batch: list[Any]) -> Consumed:
        """Apply a stream batch in order, then publish what its changes owe in ``PutEvents`` of
        ten; the answer's ``failed`` is the first record not settled (Lambda retries from it)."""
        done = Consumed()
        if self.bus is None:
            done.skipped["presence_off"] += len(batch)
            return done
        now = self.clock()
        applied: list[tuple[str, _Item, list[Event]]] = []  # sequence number, item after, events owed
        stopped: tuple[str, str] | None = None
        for record in batch:
            try:
                change = change_of(record, self.table, now)
            except Unusable as exc:
                done.skipped[exc.cause] += 1
                log.warning("presence skipped a stream record: %s", exc)
                continue
            if change is None:
                continue
            try:
                item = self._apply(change, now, done)
            except PynamoDBException as exc:
                stopped = (str(record["dynamodb"].get("SequenceNumber")), f"presence of user {change.user_id[:100]}: {exc}")
                break
            ours = {event_id(self.table, change, detail_type) for detail_type in DETAIL_TYPES}
            owed = [event for event in item.owed if event[1]["eventId"] in ours]
            if owed:
                applied.append((str(record["dynamodb"].get("SequenceNumber")), item, owed))
        self._publish(applied, done)
        if done.failed is None and stopped is not None:
            done.failed, done.problem = stopped
        if done.failed is not None:
            log.warning("stream record %s not settled, Lambda retries from it: %s", done.failed, done.problem)
        return done

    def _publish(self, applied: list[tuple[str, _Item, list[Event]]], done: Consumed) -> None:
        """Publish the batch's own events (another consumer publishes what its records owe, or
        their retry does), then clear them from each user's item once, from its latest state."""
        events = [event for _, _, owed in applied for event in owed]
        if not events:
            return
        assert self.bus is not None
        failed, why = self.bus.publish(events)
        done.published += len(events) - len(failed)
        latest: dict[str, _Item] = {}
        published: dict[str, set[str]] = {}
        for sequence, item, owed in applied:
            ids = {detail["eventId"] for _, detail in owed}
            latest[item.user_id] = item
            published.setdefault(item.user_id, set()).update(ids - failed)
            if ids & failed and done.failed is None:
                done.failed, done.problem = sequence, why or f"{len(ids & failed)} events not published"
        for user_id, ids in published.items():
            if ids:
                self._forget(ids, latest[user_id])

    def last_seen(self, user_id: str) -> str | None:
        """When the stream last saw one of the user's connections open or close (None: never, or
        presence off). A failed read is raised: the caller maps it as it maps every read's."""
        return self._read(user_id).last_seen_at

    # One change ------------------------------------------------------------------------

    def _apply(self, change: Change, now: datetime, done: Consumed) -> _Item:
        """The item after ``change``: written once, or as it was when the change was already in.

        An open connection's last sequence number is in the user's item; a closed one's in
        its mark, read only when the item does not know the connection (an open is usually
        of a new connection, so it reads both items in one request)."""
        cid = change.connection_id
        if change.opened:
            item, marked = self._read_with_mark(change.user_id, cid)
        else:
            item = self._read(change.user_id)
            marked = None if cid in item.sequences else self._closed_sequence(cid)
        for _ in range(CONTENTION_ATTEMPTS):
            last = item.sequences.get(cid, marked)
            if last is not None and last >= change.sequence:
                done.duplicates += 1
                return item  # still owing what an earlier try did not publish
            was_online = bool(item.members)
            (item.members.add if change.opened else item.members.discard)(cid)
            owed = [connection_event(change, self.table)]
            if was_online != bool(item.members):
                owed.append(user_event(change, self.table))
            if change.opened:
                item.sequences[cid] = change.sequence
            else:
                item.sequences.pop(cid, None)
            owing = {detail["eventId"] for _, detail in item.owed}
            item.last_seen_at = change.at
            item.owed = item.owed + [event for event in owed if event[1]["eventId"] not in owing]
            if self._write(item):
                if not change.opened:
                    self._mark_closed(change, now)
                done.changes += 1
                return item
            item = self._read(change.user_id)
        raise _Contention(change.user_id)

    def _mark_closed(self, change: Change, now: datetime) -> None:
        """Keep a closed connection's last sequence number for replays, out of the user's item.

        Written after the item: should it fail, the record is retried, and its retry, which
        finds neither the connection in the item nor a mark, changes no set and so says no
        transition; it re-owes ``Connection Closed`` under the same ``eventId``."""
        body = json.dumps({"userId": change.user_id, "sequence": change.sequence}, separators=(",", ":"))
        self.records(closed_key(change.connection_id), body=body, expires_at=now + KEEP_CLOSED).save()

    def _closed_sequence(self, connection_id: str) -> int | None:
        try:
            mark = self.records.get(closed_key(connection_id), consistent_read=True)
        except self.records.DoesNotExist:
            return None
        return _mark_sequence(mark)

    def _forget(self, published: set[str], item: _Item) -> None:
        """Clear published events from the item; fenced like every write, retried on contention."""
        user_id = item.user_id
        for _ in range(CONTENTION_ATTEMPTS):
            item.owed = [event for event in item.owed if event[1]["eventId"] not in published]
            if self._write(item):
                return
            item = self._read(user_id)
            if not any(event[1]["eventId"] in published for event in item.owed):
                return
        # Left owed: the next record of this user, or a retry, publishes them again under the same ids.

    # Storage ---------------------------------------------------------------------------

    def _read(self, user_id: str) -> _Item:
        try:
            stored: PlatformRecord | None = self.records.get(presence_key(user_id), consistent_read=True)
        except self.records.DoesNotExist:
            stored = None
        return _item_of(user_id, stored)

    def _read_with_mark(self, user_id: str, connection_id: str) -> tuple[_Item, int | None]:
        """The user's item and the connection's closed mark, in one consistent BatchGetItem."""
        wanted = {presence_key(user_id): "item", closed_key(connection_id): "mark"}
        found = {wanted[record.key]: record for record in self.records.batch_get(list(wanted), consistent_read=True)}
        mark = found.get("mark")
        return _item_of(user_id, found.get("item")), _mark_sequence(mark) if mark is not None else None

    def _write(self, item: _Item) -> bool:
        """Store ``item`` unless someone wrote the user's presence since it was read."""
        body = {"members": sorted(item.members), "sequences": item.sequences, "lastSeenAt": item.last_seen_at}
        record = self.records(presence_key(item.user_id), body=json.dumps(body, separators=(",", ":")),
                              pending=json.dumps(item.owed, separators=(",", ":")) if item.owed else None,
                              version=(item.version or 0) + 1)
        fence = (PlatformRecord.key.does_not_exist() if item.version is None
                 else PlatformRecord.version == item.version)
        try:
            record.save(condition=fence)
        except PynamoDBException as exc:
            if is_condition_failure(exc):
                return False
            raise
        item.version = (item.version or 0) + 1
        return True


def _item_of(user_id: str, stored: PlatformRecord | None) -> _Item:
    if stored is None:
        return _Item(user_id, set(), {}, None, [], None)
    body = json.loads(stored.body or "{}")
    members = set(body.get("members", []))
    # An item of an earlier layout kept [sequence, epoch ms] per connection, closed ones too.
    sequences = {key: int(value[0] if isinstance(value, list) else value)
                 for key, value in dict(body.get("sequences", {})).items() if key in members}
    owed = [(str(kind), dict(detail)) for kind, detail in json.loads(stored.pending or "[]")]
    return _Item(user_id, members, sequences, body.get("lastSeenAt"), owed,
                 int(stored.version) if stored.version is not None else 0)


def _mark_sequence(mark: PlatformRecord) -> int | None:
    sequence = json.loads(mark.body or "{}").get("sequence")
    return int(sequence) if isinstance(sequence, int) else None


class _Contention(PynamoDBException):
    """Every try lost to another consumer's write of the same user: Lambda retries the record."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"{CONTENTION_ATTEMPTS} writes lost to concurrent writes of user {user_id[:100]}")

