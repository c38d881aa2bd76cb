"""Query pages whose items stay DynamoDB's JSON: for the one read that touches every live row.

Botocore turns every item of an answer into Python through the service's shape model, at
about 15 µs a row with three attributes; PynamoDB's model objects add more. The snapshot
reads each live row once per pass (10 million at the sizes the capacity guide covers), and
needs three strings of each. :func:`raw_query` asks through the table's own botocore client
(its retries, timeouts and credentials) and, for that call only, hands back the answer's
``Items`` as ``json.loads`` left them: ``{"userId": {"S": "u1"}, ...}``. Everything else in
the answer (``LastEvaluatedKey``, ``Count``, errors) is parsed by botocore as usual.
"""
from __future__ import annotations

import json
import threading
from typing import Any

from pynamodb.connection.base import BOTOCORE_EXCEPTIONS
from pynamodb.exceptions import QueryError

#: Set on the thread whose call wants raw items; other calls on the same client are untouched.
_wanted = threading.local()
_MARK = "_connection_manager_raw_items"
RAW_ITEMS = "RawItems"


def raw_query(client: Any, **params: Any) -> dict[str, Any]:
    """``client.query(**params)``, with the items under ``RawItems`` instead of ``Items``.

    Failures are raised as PynamoDB's ``QueryError``, so :func:`connection_manager.dynamo.dynamo_errors`
    maps them as it maps every other read's.
    """
    _hook(client)
    _wanted.on = True
    try:
        answer: dict[str, Any] = client.query(**params)
    except BOTOCORE_EXCEPTIONS as exc:
        raise QueryError(f"Failed to query items: {exc}", exc) from exc
    finally:
        _wanted.on = False
    answer.setdefault(RAW_ITEMS, [])
    return answer


def _hook(client: Any) -> None:
    if not getattr(client, _MARK, False):
        client.meta.events.register("before-parse.dynamodb.Query", _keep_items_raw)
        setattr(client, _MARK, True)


def _keep_items_raw(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if not getattr(_wanted, "on", False) or response_dict.get("status_code") != 200:
        return  # errors go through botocore's parser, which raises them as usual
    answer = json.loads(response_dict["body"])
    customized_response_dict[RAW_ITEMS] = answer.pop("Items", [])
    response_dict["body"] = json.dumps(answer).encode("utf-8")
