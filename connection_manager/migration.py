"""Bring an existing table's indexes up to the model's layout, in place.

``create-table`` makes a new table with every index; a table created by an earlier version
lacks the indexes added since (``LiveIndex``, ``LifetimeIndex``). DynamoDB adds a global
secondary index to a live table with ``UpdateTable`` (``GlobalSecondaryIndexUpdates``
``Create``), one index per call and one being built at a time, while the table keeps
serving reads and writes; the index is queryable once ACTIVE. An index that exists with
other keys or another projection cannot be changed in place (it has to be deleted and
created again, and the reads using it fail meanwhile), so it is reported, never touched.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import msgspec
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import TableError

from connection_manager.dynamo import dynamo_errors
from connection_manager.errors import UnavailableError
from models.connection import ConnectionModel

#: Between two looks at an index being built. Building reads every item of the table:
#: seconds on a small table, longer on a large one.
POLL_SECONDS = 10.0
#: How long one index may take to become ACTIVE before ``migrate`` gives up waiting.
WAIT_SECONDS = 6 * 3600


class IndexReport(msgspec.Struct, frozen=True):
    created: list[str]
    present: list[str]
    #: Indexes that exist with other keys or another projection than the model's.
    differs: list[str]


def add_missing_indexes(
    model: type[ConnectionModel],
    sleep: Callable[[float], None] = time.sleep,
    wait_seconds: float = WAIT_SECONDS,
) -> IndexReport:
    """Create every index of ``model`` that its table lacks, each waited for until ACTIVE."""
    table = model.Meta.table_name
    client = model._get_connection().connection.client
    wanted = model._get_schema()["global_secondary_indexes"]
    description = _call("describe the table", lambda: client.describe_table(TableName=table))["Table"]
    existing = {index["IndexName"]: index for index in description.get("GlobalSecondaryIndexes", [])}
    created: list[str] = []
    present: list[str] = []
    differs: list[str] = []
    for index in wanted:
        name = index["index_name"]
        if name in existing:
            (present if _same_layout(index, existing[name]) else differs).append(name)
            continue
        create: dict[str, Any] = {"IndexName": name, "KeySchema": index["key_schema"], "Projection": index["projection"]}
        throughput = _table_throughput(description)
        if throughput is not None:
            create["ProvisionedThroughput"] = throughput
        _call(
            f"create {name}",
            lambda: client.update_table(
                TableName=table,
                AttributeDefinitions=index["attribute_definitions"],
                GlobalSecondaryIndexUpdates=[{"Create": create}],
            ),
        )
        # DynamoDB builds one new index at a time per table: the next waits for this one.
        _wait_until_active(client, table, name, sleep, wait_seconds)
        created.append(name)
    return IndexReport(created, present, differs)


def _same_layout(wanted: dict[str, Any], existing: dict[str, Any]) -> bool:
    def keys(schema: list[dict[str, str]]) -> set[tuple[str, str]]:
        return {(key["AttributeName"], key["KeyType"]) for key in schema}

    def projection(value: dict[str, Any]) -> tuple[str, frozenset[str]]:
        return value.get("ProjectionType", ""), frozenset(value.get("NonKeyAttributes", []))

    return keys(wanted["key_schema"]) == keys(existing["KeySchema"]) and projection(
        wanted["projection"]
    ) == projection(existing["Projection"])


def _table_throughput(description: dict[str, Any]) -> dict[str, int] | None:
    """A provisioned table's indexes need throughput of their own: the table's is a fair start."""
    if description.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST":
        return None
    throughput = description.get("ProvisionedThroughput") or {}
    read, write = throughput.get("ReadCapacityUnits"), throughput.get("WriteCapacityUnits")
    if not read or not write:
        return None  # on demand (older descriptions carry no BillingModeSummary)
    return {"ReadCapacityUnits": read, "WriteCapacityUnits": write}


def _wait_until_active(
    client: Any, table: str, name: str, sleep: Callable[[float], None], wait_seconds: float
) -> None:
    waited = 0.0
    while True:
        description = _call("describe the table", lambda: client.describe_table(TableName=table))["Table"]
        status = next(
            (index.get("IndexStatus") for index in description.get("GlobalSecondaryIndexes", []) if index["IndexName"] == name),
            None,
        )
        if status == "ACTIVE":
            return
        if waited >= wait_seconds:
            raise UnavailableError(
                f"{name} is still {status or 'missing'} after {int(waited)} s; run migrate again once it is ACTIVE"
            )
        sleep(POLL_SECONDS)
        waited += POLL_SECONDS


def _call(what: str, call: Callable[[], Any]) -> Any:
    """A botocore call with its failures mapped like every other DynamoDB failure (503 or 500)."""
    with dynamo_errors(f"migrate ({what})"):
        try:
            return call()
        except (ClientError, BotoCoreError) as exc:
            raise TableError(f"Failed to {what}: {exc}", exc) from exc
