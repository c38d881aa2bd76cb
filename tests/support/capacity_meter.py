"""Sum the write and read units DynamoDB reports, per table and index or per read, for boto3 clients.

Asking every UpdateItem and PutItem for ``ReturnConsumedCapacity=INDEXES`` makes DynamoDB
(and DynamoDB Local) report what it bills the table and each global secondary index. The
lifetime-index test and the hot-path benchmark both count writes this way. Standard
library only, and no pytest imports: the benchmarks use it too.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable


class CapacityMeter:
    """Write units of every UpdateItem and PutItem the attached clients send, per table and index.

    ``units["table"]`` is the table's share; every other key is an index name. Reads are
    counted apart: ``reads``, the read units of every GetItem, BatchGetItem, Query and Scan
    by operation, and ``items_asked``, the keys GetItem and BatchGetItem asked for.
    DynamoDB Local bills a BatchGetItem only for the items it finds, where DynamoDB bills a
    missing item as a read too, so ``items_asked`` is what consistent reads of small items
    cost there.
    """

    def __init__(self, client: Any | None = None) -> None:
        self.units: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.items_asked = 0
        if client is not None:
            self.attach(client)

    def attach(self, client: Any) -> None:
        """Meter ``client`` (a boto3 DynamoDB client) from now on, through its event hooks."""

        def ask(params: dict[str, Any], **_: Any) -> None:
            params["ReturnConsumedCapacity"] = "INDEXES"

        def add(parsed: dict[str, Any], **_: Any) -> None:
            consumed = parsed.get("ConsumedCapacity") or {}
            self.units["table"] += (consumed.get("Table") or {}).get("CapacityUnits", 0.0)
            for name, part in (consumed.get("GlobalSecondaryIndexes") or {}).items():
                self.units[name] += part.get("CapacityUnits", 0.0)

        def asked(params: dict[str, Any], **_: Any) -> None:
            requested = params.get("RequestItems")
            self.items_asked += sum(len(part["Keys"]) for part in requested.values()) if requested else 1

        def read(parsed: dict[str, Any], model: Any, **_: Any) -> None:
            consumed = parsed.get("ConsumedCapacity") or {}
            for part in consumed if isinstance(consumed, list) else [consumed]:
                self.reads[model.name] += part.get("CapacityUnits", 0.0)

        for operation in ("UpdateItem", "PutItem"):
            client.meta.events.register(f"provide-client-params.dynamodb.{operation}", ask)
            client.meta.events.register(f"after-call.dynamodb.{operation}", add)
        for operation in ("GetItem", "BatchGetItem", "Query", "Scan"):
            client.meta.events.register(f"provide-client-params.dynamodb.{operation}", ask)
            client.meta.events.register(f"after-call.dynamodb.{operation}", read)
        for operation in ("GetItem", "BatchGetItem"):
            client.meta.events.register(f"provide-client-params.dynamodb.{operation}", asked)

    def during(self, action: Callable[[], Any]) -> Counter[str]:
        """The units ``action`` consumed, only the tables and indexes it wrote to."""
        before = Counter(self.units)
        action()
        return Counter({name: units - before[name] for name, units in self.units.items() if units != before[name]})

