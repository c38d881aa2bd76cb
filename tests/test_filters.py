"""Filters on GET /connections and the raw get_all_connections, the CSV export, and
GET /stats/history."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

import connection_manager.wiring as wiring
from connection_manager.app import create_app
from connection_manager.clock import FixedClock
from connection_manager.config import Settings
from connection_manager.errors import ValidationError
from connection_manager.operations import run_action
from connection_manager.service import FILTER_READ_BUDGET, new_connection_row
from models.connection import ACTIVITY_BUCKET_SECONDS
from tests.support.fixtures import *  # noqa: F401,F403
from tests.support.fixtures import NOW, raw_item
from tests.support.wire import TABLE


@pytest.fixture
def client(service):
    return create_app(service).test_client()


@pytest.fixture
def fleet(make_connection):
    """Live rows idle 0, 20, 40 and 100 minutes, two clients, and one user's history."""
    make_connection("fresh", user_id="alice", metadata={"sourceIp": "203.0.113.7", "userAgent": "Mozilla/5.0 (X11)"})
    make_connection("idle-20", user_id="alice", idle=timedelta(minutes=20), metadata={"sourceIp": "198.51.100.1", "userAgent": "okhttp/4.12"})
    make_connection("idle-40", user_id="bob", idle=timedelta(minutes=40), metadata={"sourceIp": "203.0.113.7", "userAgent": "okhttp/4.12"})
    make_connection("idle-100", user_id="carol", idle=timedelta(minutes=100), metadata={"sourceIp": "=1+2", "userAgent": "=HYPERLINK(1)"})
    make_connection("gone", user_id="alice", status="DISCONNECTED")


def ids(body):
    return sorted(record["connectionId"] for record in body["connections"])


def test_get_all_connections__idle_more_than__range_on_the_live_index(service, fleet):
    # When the idle filter asks for 30 minutes or more
    status, body = run_action(service, "get_all_connections", {"idleMoreThan": 1800})

    # Then only those rows, and no nextToken
    assert status == 200
    assert ids(body) == ["idle-100", "idle-40"]
    assert "nextToken" not in body


def test_get_all_connections__user_id__reads_the_user_index_and_the_user_listing_takes_status(service, fleet):
    _, live = run_action(service, "get_all_connections", {"userId": "alice"})
    _, history = run_action(service, "get_user_connections", {"userId": "alice", "status": "DISCONNECTED"})
    _, idle = run_action(service, "get_all_connections", {"userId": "alice", "idleMoreThan": 600})

    assert ids(live) == ["fresh", "idle-20"]
    assert ids(history) == ["gone"]
    assert ids(idle) == ["idle-20"]


def test_get_connections__source_ip_and_user_agent__http_filters(client, fleet):
    by_ip = client.get("/connections?sourceIp=203.0.113.7")
    by_agent = client.get("/connections?userAgent=okhttp")
    both = client.get("/connections?sourceIp=203.0.113.7&userAgent=okhttp&idleMoreThan=60")

    assert (by_ip.status_code, ids(by_ip.json)) == (200, ["fresh", "idle-40"])
    assert ids(by_agent.json) == ["idle-20", "idle-40"]
    assert ids(both.json) == ["idle-40"]


@pytest.mark.parametrize(
    "query",
    ["idleMoreThan=-1", "idleMoreThan=abc", "sourceIp=", "userAgent=%20", "status=DISCONNECTED",
     "userId=u&status=CONNECTED", "colour=red"],
)
def test_get_connections__bad_filter__400(client, fleet, query):
    response = client.get(f"/connections?{query}")

    assert response.status_code == 400
    assert response.json["error"] == "ValidationError"


def test_get_all_connections__filter_token_with_other_filters__400(service, fleet):
    _, page = run_action(service, "get_all_connections", {"userAgent": "okhttp", "limit": 1})
    assert page["nextToken"]

    with pytest.raises(ValidationError):
        run_action(service, "get_all_connections", {"userAgent": "Mozilla", "limit": 1, "nextToken": page["nextToken"]})


def test_get_all_connections__rare_match__page_stops_at_the_read_budget(service, make_connection, monkeypatch):
    # Given 30 live rows of which only the last written matches, and a read budget of 10
    monkeypatch.setattr("connection_manager.reads.FILTER_READ_BUDGET", 10)
    for index in range(29):
        make_connection(f"plain-{index:02d}", metadata={"userAgent": "curl/8.5"})
    make_connection("needle", metadata={"userAgent": "needle-client"})

    # When pages are followed
    pages, found, token = 0, [], None
    while True:
        payload = {"userAgent": "needle", "limit": 50} | ({"nextToken": token} if token else {})
        _, body = run_action(service, "get_all_connections", payload)
        pages += 1
        found += ids(body)
        token = body.get("nextToken")
        if not token:
            break

    # Then each page read at most 10 items, so it took several pages to find the one match
    assert found == ["needle"]
    assert pages >= 3
    assert FILTER_READ_BUDGET == 1000


def test_get_connections__accept_csv__streams_every_page_with_the_filters(client, fleet):
    response = client.get("/connections?limit=1&idleMoreThan=600", headers={"Accept": "text/csv"})

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(row["connectionId"] for row in rows) == ["idle-100", "idle-20", "idle-40"]
    carol = next(row for row in rows if row["userId"] == "carol")
    assert (carol["sourceIp"], carol["userAgent"]) == ("'=1+2", "'=HYPERLINK(1)")  # no formulas
    assert raw_item("idle-100")["status"] == "CONNECTED"  # a read changes nothing


def test_get_connections__csv_with_a_bad_filter__400_json(client, fleet):
    response = client.get("/connections?idleMoreThan=-1", headers={"Accept": "text/csv"})

    assert (response.status_code, response.json["error"]) == (400, "ValidationError")


def test_get_stats_history__after_a_sweep__the_sweep_is_listed(client, service, make_connection):
    make_connection("stale", idle=timedelta(hours=2))
    make_connection("live", user_id="u2")
    assert client.post("/connections/cleanup", json={}).status_code == 200

    response = client.get("/stats/history?hours=24")
    bad = client.get("/stats/history?hours=0")

    assert response.status_code == 200
    assert response.json["count"] == 1
    assert response.json["sweeps"][0] | {"durationMs": 0} == {
        "at": "2024-01-01T12:00:00Z", "activeConnections": 1, "distinctUsers": 1, "staleFound": 1, "cleaned": 1,
        "gone": 0, "lifetime": 0, "evicted": 0, "durationMs": 0,
    }
    assert bad.status_code == 400


# Cost, measured on the wire --------------------------------------------------------------


def test_get_all_connections__idle_more_than_on_500_live_rows__reads_about_what_it_returns(engine_proxy, monkeypatch):
    # Given 500 live rows idle 0, 10, 20 ... 4,990 s, each in the live index's bucket of its
    # last activity (as the service writes them), on a real engine behind the counting proxy
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", engine_proxy.url)
    monkeypatch.setattr(wiring, "_service", None)
    service = wiring.build_service(Settings(table_name=TABLE, region="us-east-1"), FixedClock(NOW))
    service.create_table()
    with service.model.batch_write() as batch:
        for index in range(500):
            last_active = NOW - timedelta(seconds=10 * index)
            row = new_connection_row(f"conn-{index:03d}", f"user-{index % 50}", last_active, None, service.model)
            batch.save(row)
    engine_proxy.reset_counters()

    # When the idle filter asks for rows idle more than 4,490 s (the 50 idle 4,500 s or more)
    status, body = run_action(service, "get_all_connections", {"idleMoreThan": 4490, "limit": 1000})

    # Then it returns exactly those, with no page left
    assert status == 200
    assert ids(body) == [f"conn-{index:03d}" for index in range(450, 500)]
    assert "nextToken" not in body
    # And DynamoDB read at most the rows returned plus one activity bucket's worth. The live
    # index is keyed by 900 s buckets, so the range can only stop at the cutoff's bucket: the
    # rows of that one bucket that are not idle long enough yet are read and filtered out
    # (here 89: idle 3,610 to 4,490 s, one row per 10 s). Every other bucket the range reads
    # holds only rows it returns, and no bucket after the cutoff's is read at all.
    counters = engine_proxy.snapshot()
    one_bucket = ACTIVITY_BUCKET_SECONDS // 10
    assert body["count"] <= counters["items_read"] <= body["count"] + one_bucket
    assert counters["items_read"] < 500 // 3  # against 500 for a read of the whole live set
    # And the read changed nothing stored: the proxy saw Queries only, not one write
    assert set(counters["by_operation"]) == {"Query"}
