"""A DynamoDB proxy that meters what DynamoDB would bill, for every client behind it.

:class:`tests.support.capacity_meter.CapacityMeter` meters one boto3 client in one process.
A Lambda fleet is many processes, each with its own client, so the hot-path benchmark puts
this proxy in front of DynamoDB Local instead: it adds ``ReturnConsumedCapacity=INDEXES`` to
every request that takes it and sums the ``ConsumedCapacity`` of every answer, whichever
process sent the request.

A failed condition answers an error without ``ConsumedCapacity``, but DynamoDB still bills the
write it would have made (1 write unit for an item under 1 KB, the rows here): the proxy
counts it as 1 write unit on the table. Standard library only, and no pytest imports.

    with DynamoDBLocal() as server, MeteringProxy(server.url) as proxy:
        ...  # point AWS_ENDPOINT_URL_DYNAMODB at proxy.url, in any number of processes
        proxy.capacity()  # {"WRU": ..., "RRU": ..., "failed_conditions": ..., ...}
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tests.support.dynamo_proxy import DynamoProxy

#: Operations that accept ``ReturnConsumedCapacity``, and whether they read or write.
READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
#: On-demand price of a write request unit over that of a read request unit.
WRITE_TO_READ_PRICE = 5
_FAILED_CONDITION = "ConditionalCheckFailedException"


def write_unit_equivalents(wru: float, rru: float) -> float:
    """What reads and writes cost together, in write units: WRU + RRU / 5 (on-demand prices)."""
    return wru + rru / WRITE_TO_READ_PRICE


class MeteringProxy(DynamoProxy):
    """:class:`DynamoProxy` that sums read and write units per table and index.

    ``capacity()`` gives ``WRU``, ``RRU`` (totals), ``WUE`` (:func:`write_unit_equivalents`),
    ``failed_conditions`` (each counted in ``WRU``), ``requests`` per operation and ``units``
    per ``"<read|write> <table or index>"``.
    """

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self._units: Counter[str] = Counter()
            self._failed_conditions = 0
            self._metered: Counter[str] = Counter()

    def capacity(self) -> dict[str, Any]:
        with self._lock:
            units = dict(self._units)
            failed = self._failed_conditions
            metered = dict(self._metered)
        wru = sum(value for key, value in units.items() if key.startswith("write ")) + failed
        rru = sum(value for key, value in units.items() if key.startswith("read "))
        return {"WRU": wru, "RRU": rru, "WUE": write_unit_equivalents(wru, rru),
                "failed_conditions": failed, "requests": metered, "units": units}

    def _rewrite_request(self, operation: str | None, body: bytes) -> bytes:
        if operation not in READS and operation not in WRITES:
            return body
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return body
        if not isinstance(request, dict):
            return body
        request["ReturnConsumedCapacity"] = "INDEXES"
        return json.dumps(request).encode()

    def _record_response(self, operation: str | None, status: int, body: bytes) -> None:
        super()._record_response(operation, status, body)
        if operation not in READS and operation not in WRITES:
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        kind = "read" if operation in READS else "write"
        with self._lock:
            self._metered[operation] += 1
            if status != 200:
                if str(payload.get("__type", "")).endswith(_FAILED_CONDITION):
                    self._failed_conditions += 1
                return
            consumed = payload.get("ConsumedCapacity") or []
            for part in consumed if isinstance(consumed, list) else [consumed]:
                self._add(kind, part)

    def _add(self, kind: str, consumed: dict[str, Any]) -> None:
        table = consumed.get("TableName", "?")
        parts = {table: consumed.get("Table")} | (consumed.get("GlobalSecondaryIndexes") or {}) | (
            consumed.get("LocalSecondaryIndexes") or {}
        )
        if not any(parts.values()):
            self._units[f"{kind} {table}"] += consumed.get("CapacityUnits", 0.0)
            return
        for name, part in parts.items():
            if part:
                self._units[f"{kind} {name}"] += part.get("CapacityUnits", 0.0)
