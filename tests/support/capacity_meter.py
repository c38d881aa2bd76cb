"""Sum the write units DynamoDB reports, per table and per index, for one boto3 client.

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

    ``units["table"]`` is the table's share; every other key is an index name.
    """

    def __init__(self, client: Any | None = None) -> None:
        self.units: Counter[str] = Counter()
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

        for operation in ("UpdateItem", "PutItem"):
            client.meta.events.register(f"provide-client-params.dynamodb.{operation}", ask)
            client.meta.events.register(f"after-call.dynamodb.{operation}", add)

    def during(self, action: Callable[[], Any]) -> Counter[str]:
        """The units ``action`` consumed, only the tables and indexes it wrote to."""
        before = Counter(self.units)
        action()
        return Counter({name: units - before[name] for name, units in self.units.items() if units != before[name]})


class ReadMeter:
    """Read units of every GetItem and BatchGetItem the attached client sends (``units``).

    DynamoDB Local bills a BatchGetItem only for the items it finds; DynamoDB bills a
    missing item as a read too, so count what a request asked for where that matters.
    """

    def __init__(self, client: Any) -> None:
        self.units = 0.0

        def ask(params: dict[str, Any], **_: Any) -> None:
            params["ReturnConsumedCapacity"] = "TOTAL"

        def add(parsed: dict[str, Any], **_: Any) -> None:
            consumed = parsed.get("ConsumedCapacity") or {}
            for part in consumed if isinstance(consumed, list) else [consumed]:
                self.units += part.get("CapacityUnits", 0.0)

        for operation in ("GetItem", "BatchGetItem"):
            client.meta.events.register(f"provide-client-params.dynamodb.{operation}", ask)
            client.meta.events.register(f"after-call.dynamodb.{operation}", add)
