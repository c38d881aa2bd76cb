"""End to end: real WebSocket clients, API Gateway emulated by serverless-offline.

Everything else tests the handler with events we wrote. Here serverless-offline
(tests/e2e/serverless.yml) accepts real sockets and runs ``lambda_handler`` in Python for
``$connect``, ``$disconnect`` and every message, and it serves the ``@connections`` API
our gateway client calls: a DeleteConnection closes a real socket, which then sends its
own ``$disconnect``, exactly the sequence API Gateway produces. The table is DynamoDB
Local. The admin acts in this process, through ``lambda_handler``'s raw actions.

The emulator takes seconds to start, so one serves the module; each test starts from an
empty table. Waiting is polling with a bound, never a fixed sleep.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import connection_manager.wiring as wiring
from connection_manager.handler import lambda_handler
from tests.support.dynamodb_local import DynamoDBLocal
from tests.support.serverless_offline import ServerlessOffline
from tests.support.wire import TABLE, direct_client, stored

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.dynamodb_local, pytest.mark.slow]

#: Bounds on every wait: generous for a loaded 2-core machine, and still well inside the
#: test's own timeout, so a hang fails here with a message rather than in pytest-timeout.
WAIT_SECONDS = 20.0

T = TypeVar("T")


@pytest.fixture(scope="module")
def offline(dynamodb_local: DynamoDBLocal) -> Iterator[ServerlessOffline]:
    """One serverless-offline for the module, its Lambda on DynamoDB Local."""
    server = ServerlessOffline({"CONNECTIONS_TABLE_NAME": TABLE, "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local.url})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin(offline: ServerlessOffline, dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty table, and this process's handler pointed at the same table and gateway."""
    dynamodb_local.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local.url)
    monkeypatch.setenv("CONNECTIONS_TABLE_NAME", TABLE)
    monkeypatch.setenv("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI", offline.url)
    monkeypatch.setattr(wiring, "_service", None)
    wiring.get_service().create_table()
    return direct_client(dynamodb_local.url)


@pytest.fixture
def clients() -> Iterator[ExitStack]:
    """Holds every socket a test opens, and closes them at the end whatever happened."""
    with ExitStack() as opened:
        yield opened


def wait_for(check: Callable[[], T | None], what: str, offline: ServerlessOffline) -> T:
    """Poll ``check`` until it answers something truthy; fail with the emulator's log after the bound."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_SECONDS:.0f}s; serverless-offline said:\n{offline.output()}")
        time.sleep(0.05)


def user_connection_ids(user_id: str) -> set[str]:
    response = lambda_handler({"action": "get_user_connections", "userId": user_id})
    assert response["statusCode"] == 200, response
    return {row["connectionId"] for row in response["body"]["connections"]}


def open_client(offline: ServerlessOffline, clients: ExitStack, user_id: str) -> tuple[ClientConnection, str]:
    """Connect as ``user_id``; return the socket and the connection id its ``$connect`` registered.

    API Gateway (and serverless-offline) completes the handshake only after ``$connect``
    answered 200, so the row exists once ``connect`` returns.
    """
    before = user_connection_ids(user_id)
    client = clients.enter_context(connect(f"{offline.ws_url}/?userId={user_id}", open_timeout=WAIT_SECONDS))
    (connection_id,) = user_connection_ids(user_id) - before
    return client, connection_id


def into_next_second(timestamp: str, offline: ServerlessOffline) -> None:
    """Return once the wall clock is past ``timestamp``'s second.

    Stored times have a resolution of one second: what happens next (a message, a newer
    connection) is then told apart from what came before by its time alone, as it would
    be in production where seconds pass between a connect and what follows.
    """
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    wait_for(lambda: datetime.now(timezone.utc).replace(microsecond=0) > then, "next second", offline)


def closes(client: ClientConnection) -> bool:
    """True once the server has closed ``client``; False while it stays open for the wait."""
    try:
        client.recv(timeout=WAIT_SECONDS)
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False
    return False  # a message instead of a close: not what any of these tests expects


def still_open(client: ClientConnection) -> bool:
    """A ping answered: the socket is open at both ends."""
    return client.ping().wait(WAIT_SECONDS)


def test_websocket__admin_disconnect__closes_the_socket_and_the_row_keeps_reason_admin(
    offline: ServerlessOffline, admin: Any, clients: ExitStack
) -> None:
    # Given a client connected through the gateway, which has sent a message
    client, connection_id = open_client(offline, clients, "alice")
    connected = stored(admin, connection_id)
    assert connected is not None and connected["status"] == "CONNECTED" and connected["userId"] == "alice"
    into_next_second(connected["createdAt"], offline)
    client.send("hello")
    active = wait_for(
        lambda: (row := stored(admin, connection_id)) and row["lastActiveAt"] > connected["createdAt"] and row,
        "activity from the message",
        offline,
    )
    assert active["status"] == "CONNECTED"

    # When an admin disconnects it
    response = lambda_handler(
        {"action": "update_connection_status", "connectionId": connection_id, "status": "DISCONNECTED"}
    )

    # Then the answer says so, with every socket closed
    assert response["statusCode"] == 200, response
    assert response["body"]["connection"]["status"] == "DISCONNECTED"
    assert response["body"]["connection"]["disconnectReason"] == "admin"
    assert response["body"].get("notClosedCount", 0) == 0
    # And the client sees its socket closed by the server
    assert closes(client)
    # And the gateway's $disconnect that follows leaves the admin's reason in place
    wait_for(
        lambda: f"audit apigateway:$disconnect disconnect connectionId={connection_id} -> " in offline.output(last=None),
        "$disconnect handled",
        offline,
    )
    row = stored(admin, connection_id)
    assert row is not None
    assert row["status"] == "DISCONNECTED" and row["disconnectReason"] == "admin"
    assert row["lastActiveAt"] == active["lastActiveAt"]


def test_websocket__third_connect_over_a_cap_of_two__closes_the_oldest_client(
    offline: ServerlessOffline, admin: Any, clients: ExitStack
) -> None:
    # Given two clients of one user (MAX_CONNECTIONS_PER_USER=2), connected a second apart
    oldest, oldest_id = open_client(offline, clients, "bob")
    into_next_second(stored(admin, oldest_id)["createdAt"], offline)
    middle, middle_id = open_client(offline, clients, "bob")
    into_next_second(stored(admin, middle_id)["createdAt"], offline)

    # When the same user connects a third time
    newest, newest_id = open_client(offline, clients, "bob")

    # Then the oldest client's socket is closed by the server, and the other two stay open
    assert closes(oldest)
    assert still_open(middle) and still_open(newest)
    # And what is stored: the oldest evicted (its own $disconnect changes nothing), the two newest live
    wait_for(
        lambda: f"audit apigateway:$disconnect disconnect connectionId={oldest_id} -> " in offline.output(last=None),
        "$disconnect of the evicted client handled",
        offline,
    )
    evicted = stored(admin, oldest_id)
    assert evicted is not None and evicted["status"] == "DISCONNECTED" and evicted["disconnectReason"] == "evicted"
    assert user_connection_ids("bob") == {middle_id, newest_id}


def live_processes_in_group(group: int) -> list[str]:
    """Command names of the processes of process group ``group`` that still run (zombies aside)."""
    names: list[str] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited while we looked
        command, _, rest = text.partition(" (")[2].rpartition(")")
        state, _parent, pgrp = rest.split()[:3]
        if int(pgrp) == group and state != "Z":
            names.append(command)
    return names


def test_serverless_offline__stop__leaves_no_node_and_no_python_worker_behind(
    dynamodb_local: DynamoDBLocal, admin: Any
) -> None:
    # Given a serverless-offline of its own whose handler has run (so a Python worker lives)
    server = ServerlessOffline({"CONNECTIONS_TABLE_NAME": TABLE, "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local.url})
    server.start()
    try:
        with connect(f"{server.ws_url}/?userId=carol", open_timeout=WAIT_SECONDS):
            group = server.process_group_id
            assert group is not None
            running = live_processes_in_group(group)
            assert any(name.startswith("python") for name in running), running
    finally:
        # When it is stopped
        server.stop()

    # Then nothing of its process group is left: node and its workers are gone
    assert live_processes_in_group(group) == []
