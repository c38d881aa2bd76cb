"""Query pages whose items skip botocore's parser: for the one read that touches every live row.

Botocore turns every item of an answer into Python through the service's shape model, at
about 15 µs a row with three attributes; PynamoDB's model objects add more. The snapshot
reads each live row once per pass (10 million at the sizes the capacity guide covers), and
needs three strings of each. :func:`raw_query` asks through the table's own botocore client
(its retries, timeouts and credentials) and, for that call only, decodes the answer's
``Items`` with msgspec straight into small structs that hold only the attributes asked for
(:func:`row_decoder`), each as its DynamoDB type letters (``row.userId.S``). Everything else
in the answer (``LastEvaluatedKey``, ``Count``, errors) is parsed by botocore as usual.
"""
from __future__ import annotations

import json
import threading
from typing import Any

import msgspec

from pynamodb.connection.base import BOTOCORE_EXCEPTIONS
from pynamodb.exceptions import QueryError

#: Set on the thread whose call wants raw items; other calls on the same client are untouched.
_wanted = threading.local()
_MARK = "_connection_manager_raw_items"
RAW_ITEMS = "RawItems"


class Value(msgspec.Struct):
    """One attribute as DynamoDB's JSON gives it; only the types the snapshot reads."""

    S: str | None = None
    N: str | None = None


def row_decoder(**attributes: str) -> msgspec.json.Decoder:
    """A decoder of Query answers whose rows hold ``attributes`` (field name: stored name), each a
    :class:`Value` or None; every other attribute of an item is skipped unread."""
    row = msgspec.defstruct("Row", [(name, Value | None, None) for name in attributes], rename=attributes)
    answer = msgspec.defstruct("Answer", [
        ("Items", list[row], []), ("LastEvaluatedKey", dict[str, Any] | None, None), ("Count", int | None, None),
        ("ScannedCount", int | None, None), ("ConsumedCapacity", Any, None),
    ])
    return msgspec.json.Decoder(answer)


def raw_query(client: Any, rows: msgspec.json.Decoder, **params: Any) -> dict[str, Any]:
    """``client.query(**params)``, with the items under ``RawItems`` instead of ``Items``, as
    ``rows`` (a :func:`row_decoder`) decodes them.

    Failures are raised as PynamoDB's ``QueryError``, so :func:`connection_manager.dynamo.dynamo_errors`
    maps them as it maps every other read's.
    """
    _hook(client)
    _wanted.rows = rows
    try:
        answer: dict[str, Any] = client.query(**params)
    except BOTOCORE_EXCEPTIONS as exc:
        raise QueryError(f"Failed to query items: {exc}", exc) from exc
    finally:
        _wanted.rows = None
    answer.setdefault(RAW_ITEMS, [])
    return answer


def _hook(client: Any) -> None:
    if not getattr(client, _MARK, False):
        client.meta.events.register("before-parse.dynamodb.Query", _keep_items_raw)
        setattr(client, _MARK, True)


def _keep_items_raw(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    rows = getattr(_wanted, "rows", None)
    if rows is None or response_dict.get("status_code") != 200:
        return  # errors go through botocore's parser, which raises them as usual
    answer = rows.decode(response_dict["body"])
    customized_response_dict[RAW_ITEMS] = answer.Items
    rest = {field: getattr(answer, field) for field in answer.__struct_fields__ if field != "Items"}
    response_dict["body"] = json.dumps({key: value for key, value in rest.items() if value is not None}).encode("utf-8")
