"""Concurrent writers on the same rows: heartbeats vs the sweep, two sweeps, disconnect vs register.

The contract's promise is that a heartbeat landing while cleanup runs wins, and that
counts are true counts. Two kinds of test check it:

* deterministic interleavings on the in-process mock, where a hook runs the competing
  write exactly between the sweep's read and its conditional write;
* real threads over HTTP, on moto_server and on Amazon DynamoDB Local, repeated a few
  times, asserting the invariants that must hold whatever the interleaving turned out to be.

Time is a ``FixedClock`` in both, so "near the cutoff" is exact and nothing sleeps.
"""
from __future__ import annotations

import itertools
import os
import random
import threading
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any, Callable

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

import connection_manager.wiring as wiring
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.errors import ConflictError
from connection_manager.service import ConnectionService, new_connection_row
from models.connection import ConnectionModel, DisconnectReason, shard_for
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, raw_item, raw_items
from tests.support.dynamo_proxy import DynamoProxy
from tests.support.engines import Engine
from tests.support.threads import start_together
from models.platform import is_reserved

STALE_AFTER = 3600


def assert_index_invariant(items: list[dict[str, Any]]) -> None:
    for item in items:
        if item["status"] == "CONNECTED":
            assert item.get("activeShard") == shard_for(item["connectionId"]), item
        else:
            assert "activeShard" not in item, item


# Deterministic interleavings (in-process) -------------------------------------------------------


def _hook_before_sweep_write(
    monkeypatch: pytest.MonkeyPatch, service: ConnectionService, hook: Callable[[str], None]
) -> None:
    """Run ``hook(connection_id)`` after the sweep has read a row and before it writes it."""
    original = service._sweep_one

    def sweep_one(connection_id: str, cutoff: Any, *rest: Any) -> str:
        hook(connection_id)
        return original(connection_id, cutoff, *rest)

    monkeypatch.setattr(service, "_sweep_one", sweep_one)


def test_heartbeat_between_sweep_read_and_write__heartbeat_wins(service, make_connection, clock, monkeypatch):
    for index in range(8):
        make_connection(f"c{index}", user_id="u1", idle=timedelta(seconds=STALE_AFTER + 1))
    saved = {"c1", "c4", "c6"}
    answers: dict[str, str] = {}
    _hook_before_sweep_write(
        monkeypatch, service, lambda cid: answers.setdefault(cid, service.heartbeat(cid)["status"]) if cid in saved else None
    )

    result = service.cleanup_stale_connections()

    assert answers == {cid: "CONNECTED" for cid in saved}
    assert result.scanned == 8
    assert result.cleaned == 5
    assert result.skipped == 3
    for item in raw_items():
        expected = "CONNECTED" if item["connectionId"] in saved else "DISCONNECTED"
        assert item["status"] == expected, item
    assert_index_invariant(raw_items())


def test_client_disconnect_between_sweep_read_and_write__keeps_reason_client(service, make_connection, monkeypatch):
    make_connection("c1", user_id="u1", idle=timedelta(hours=2))
    make_connection("c2", user_id="u1", idle=timedelta(hours=2))
    _hook_before_sweep_write(
        monkeypatch, service, lambda cid: service.disconnect(cid, DisconnectReason.CLIENT) if cid == "c1" else None
    )

    result = service.cleanup_stale_connections()

    assert result.cleaned == 1
    assert raw_item("c1")["disconnectReason"] == "client"
    assert raw_item("c2")["disconnectReason"] == "stale"


def test_heartbeat_after_the_sweep_wrote__409_and_row_stays_stale(service, make_connection, clock):
    make_connection("c1", user_id="u1", idle=timedelta(hours=2))
    service.cleanup_stale_connections()
    stale = raw_item("c1")

    with pytest.raises(ConflictError):
        service.heartbeat("c1")

    assert raw_item("c1") == stale


def test_second_sweep_inside_the_first__no_row_counted_twice(make_connection, settings, clock, monkeypatch):
    for index in range(12):
        make_connection(f"c{index}", user_id="u1", idle=timedelta(hours=2))
    # One write at a time in the outer sweep, so the inner one runs exactly once, in between.
    outer = ConnectionService(replace(settings, sweep_concurrency=1), clock)
    inner = ConnectionService(settings, clock)
    results = []
    _hook_before_sweep_write(
        monkeypatch, outer, lambda cid: results.append(inner.cleanup_stale_connections()) if not results else None
    )

    first = outer.cleanup_stale_connections()

    assert len(results) == 1
    assert results[0].cleaned == 12  # the inner sweep saw every row
    assert first.cleaned == 0  # and the outer one, arriving second, claims none of them
    assert first.skipped >= 1
    assert sum(item["disconnectReason"] == "stale" for item in raw_items()) == 12


# Real threads over HTTP, on both engines ------------------------------------------------------------


@pytest.fixture
def wire(engine: Engine, engine_proxy: DynamoProxy, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a table on an empty server, reached over HTTP through the proxy.

    DynamoDB applies each conditional write atomically, and so does DynamoDB Local: there
    the requests race for real. moto does not: it checks the condition and applies the
    update in separate steps without a lock, so two concurrent writes to one item can both
    pass the same condition (seen here as a row claimed by two sweeps). On moto the proxy
    forwards one request at a time, which restores DynamoDB's guarantee; the clients stay
    as concurrent as in production, which is what these tests are about.
    """
    engine_proxy.serialize_upstream = not engine.atomic_conditional_writes
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine_proxy.url)
    monkeypatch.setattr(wiring, "_service", None)
    settings = Settings(table_name="connections-race", region="us-east-1", sweep_concurrency=8)
    wiring.build_service(settings, FixedClock(NOW)).create_table()  # binds the model _seed writes through
    return settings


_clients: dict[str, Any] = {}


def _raw_items(settings: Settings) -> dict[str, dict[str, Any]]:
    endpoint = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
    client = _clients.get(endpoint) or _clients.setdefault(
        endpoint, boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    )
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": settings.table_name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            plain = {k: TypeDeserializer().deserialize(v) for k, v in item.items()}
            if not is_reserved(plain["connectionId"]):  # the platform's counters and history
                items[plain["connectionId"]] = plain
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _seed(prefix: str, count: int, user: str = "u1", stale: bool = True, shard: int | None = None) -> list[str]:
    """Rows idle 1 to 30 seconds past the cutoff (all stale, all just barely), or fresh ones;
    with ``shard``, only ids that fall in that live shard."""
    candidates = (f"{prefix}-{index:03d}" for index in itertools.count())
    ids = list(itertools.islice((c for c in candidates if shard is None or shard_for(c) == shard), count))
    with ConnectionModel.batch_write() as batch:
        for index, connection_id in enumerate(ids):
            idle = timedelta(seconds=STALE_AFTER + 1 + index % 30) if stale else timedelta(0)
            batch.save(new_connection_row(connection_id, user, NOW - idle))
    return ids


@pytest.mark.integration
def test_heartbeats_during_a_sweep__every_acknowledged_heartbeat_survives(wire, monkeypatch):
    outcomes: Counter[int] = Counter()
    # Both services see the same instant; heartbeats land after the cutoff, stale rows before it.
    sweeper = ConnectionService(wire, FixedClock(NOW))
    beater = ConnectionService(wire, FixedClock(NOW))
    # The sweep's first write waits until told: heartbeats can then land between its read
    # and its writes on purpose, instead of by luck of the scheduler (which made this test
    # fail whenever one side happened to finish before the other started).
    reading_done, writes_may_start = threading.Event(), threading.Event()
    ask = sweeper._sweep_candidate

    def gated(*args: Any, **kwargs: Any) -> str:
        reading_done.set()
        assert writes_may_start.wait(timeout=60)
        return ask(*args, **kwargs)

    monkeypatch.setattr(sweeper, "_sweep_candidate", gated)
    for trial in range(3):
        ids = _seed(f"t{trial}", 32)
        rng = random.Random(trial)
        chosen = rng.sample(ids, 16)
        # Before the sweep writes (must win), while it writes (either way), after it (must lose).
        early, racing, late = chosen[:6], chosen[6:12], chosen[12:]
        answers: dict[str, int] = {}
        lock = threading.Lock()
        sweep: list[Any] = []
        reading_done.clear()
        writes_may_start.clear()

        def beat(batch: list[str]) -> None:
            for connection_id in batch:
                try:
                    beater.heartbeat(connection_id)
                    code = 200
                except ConflictError:
                    code = 409
                with lock:
                    answers[connection_id] = code

        sweeping = threading.Thread(target=lambda: sweep.append(sweeper.cleanup_stale_connections()))
        sweeping.start()
        assert reading_done.wait(timeout=60)
        start_together(*[lambda batch=early[i::3]: beat(batch) for i in range(3)])
        start_together(
            writes_may_start.set, *[lambda batch=racing[i::3]: beat(batch) for i in range(3)]
        )
        sweeping.join(timeout=120)
        assert not sweeping.is_alive() and sweep, "the sweep did not finish"
        beat(late)

        result = sweep[0]
        items = {cid: item for cid, item in _raw_items(wire).items() if cid.startswith(f"t{trial}-")}
        stale = {cid for cid, item in items.items() if item.get("disconnectReason") == "stale"}
        assert len(answers) == len(chosen)
        assert all(answers[cid] == 200 for cid in early) and all(answers[cid] == 409 for cid in late), answers
        for connection_id, code in answers.items():
            item = items[connection_id]
            if code == 200:
                assert item["status"] == "CONNECTED", item
                assert item["lastActiveAt"] == "2024-01-01T12:00:00Z"
            else:
                assert connection_id in stale, item
        for connection_id in set(ids) - set(chosen):
            assert connection_id in stale
        assert result.cleaned == len(stale)
        assert result.failed == 0 and result.complete
        assert result.scanned == result.cleaned + result.skipped
        assert_index_invariant(list(items.values()))
        outcomes.update(answers.values())
    assert outcomes[200] >= 18 and outcomes[409] >= 12, outcomes


def _hold_writes_until_both_sweeps_write(monkeypatch: pytest.MonkeyPatch, *services: ConnectionService) -> None:
    """No sweep writes before every sweep is ready to write.

    A sweep fetches a shard's whole page of stale rows before its first write; with every
    row in one shard, once the gate opens each sweep holds all of them and races the other
    for each one. Without the gate the first sweep to start often finishes before the other
    reads anything, and nothing is contended. (Rows spread over shards would make that
    depend on which shard's answer came first, a matter of scheduling.)
    """
    lock = threading.Lock()
    arrived: set[int] = set()
    everyone = threading.Event()
    for service in services:
        original = service._sweep_one

        def sweep_one(
            connection_id: str, cutoff: Any, *rest: Any, original: Any = original, key: int = id(service)
        ) -> str:
            with lock:
                arrived.add(key)
                if len(arrived) == len(services):
                    everyone.set()
            # A guard against hanging, not a timing assumption: a sweep that went on alone
            # would fail its write (and the test) instead of quietly racing nobody.
            assert everyone.wait(timeout=120), "the other sweep never reached its first write"
            return original(connection_id, cutoff, *rest)

        monkeypatch.setattr(service, "_sweep_one", sweep_one)


@pytest.mark.integration
def test_two_sweeps_at_once__each_row_counted_once(wire, monkeypatch):
    for trial in range(3):
        first = ConnectionService(wire, FixedClock(NOW))
        second = ConnectionService(wire, FixedClock(NOW))
        _hold_writes_until_both_sweeps_write(monkeypatch, first, second)
        ids = _seed(f"s{trial}", 24, shard=0)
        results: list[Any] = []

        start_together(
            lambda: results.append(first.cleanup_stale_connections()),
            lambda: results.append(second.cleanup_stale_connections()),
        )

        items = {cid: item for cid, item in _raw_items(wire).items() if cid.startswith(f"s{trial}-")}
        assert all(items[cid]["disconnectReason"] == "stale" for cid in ids)
        assert sum(result.cleaned for result in results) == len(ids)
        # Both sweeps held every row; for each, exactly one write won and the other was skipped.
        assert [result.cleaned + result.skipped for result in results] == [len(ids), len(ids)]
        assert sum(result.skipped for result in results) == len(ids)
        assert all(result.failed == 0 and result.complete for result in results)
        assert_index_invariant(list(items.values()))


@pytest.mark.integration
def test_disconnect_user_while_the_user_registers__counts_are_exact(wire):
    service = ConnectionService(wire, FixedClock(NOW))
    for trial in range(2):
        user = f"user-{trial}"
        existing = _seed(f"old{trial}", 25, user=user, stale=False)
        new_ids = [f"new{trial}-{index:03d}" for index in range(25)]
        registered: list[int] = []
        counted: list[int] = []
        lock = threading.Lock()

        def register(batch: list[str]) -> None:
            for connection_id in batch:
                _, created = service.register_connection(connection_id, user)
                with lock:
                    registered.append(201 if created else 200)

        start_together(
            lambda: counted.append(service.disconnect_user(user)),
            *[lambda batch=new_ids[i::4]: register(batch) for i in range(4)],
        )

        items = {cid: item for cid, item in _raw_items(wire).items() if item["userId"] == user}
        admin = {cid for cid, item in items.items() if item.get("disconnectReason") == "admin"}
        connected = {cid for cid, item in items.items() if item["status"] == "CONNECTED"}
        assert registered == [201] * 25
        assert len(items) == 50
        assert set(existing) <= admin  # everything that existed before the call is gone
        assert admin | connected == set(items)
        assert counted == [len(admin)]
        listed = service.get_user_connections(user, limit=100).connections
        assert {record["connectionId"] for record in listed} == connected
        assert_index_invariant(list(items.values()))
