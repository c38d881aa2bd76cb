"""The service wired to a DynamoDB endpoint over HTTP (moto server, usually behind the proxy).

Fault and load tests need the real wire path: botocore's retries, dropped sockets and
latency only exist there. These helpers point the process-wide service at an endpoint and
read back what the server really stored, bypassing the proxy so the check itself never
meets an injected fault.
"""
from __future__ import annotations

from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

import connection_manager.wiring as wiring
from connection_manager.service import ConnectionService
from models.platform import is_reserved

TABLE = "connections"

_deserializer = TypeDeserializer()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> ConnectionService:
    """Point ``lambda_handler`` at ``url`` (with extra environment) and return its service."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", url)
    monkeypatch.setenv("CONNECTIONS_TABLE_NAME", TABLE)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wiring, "_service", None)
    return wiring.get_service()


def direct_client(url: str) -> Any:
    """A boto3 client straight to ``url`` (the moto server, not the proxy)."""
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")


def stored(client: Any, connection_id: str) -> dict[str, Any] | None:
    response = client.get_item(TableName=TABLE, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True)
    item = response.get("Item")
    return None if item is None else {k: _deserializer.deserialize(v) for k, v in item.items()}


def stored_all(client: Any) -> dict[str, dict[str, Any]]:
    """Every row by connection id (a full Scan: fine for a test table)."""
    rows: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": TABLE, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            row = {k: _deserializer.deserialize(v) for k, v in item.items()}
            if not is_reserved(row["connectionId"]):  # the platform's counters and history
                rows[row["connectionId"]] = row
        if "LastEvaluatedKey" not in page:
            return rows
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

