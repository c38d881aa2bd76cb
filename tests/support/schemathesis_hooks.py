"""Schemathesis hooks for fuzzing the admin API: a valid ``nextToken`` is one this server issued.

The document describes a token's shape (a pattern and a length), but a signature cannot be
put in a schema: a string of that shape that the server did not sign is a 400 (the
contract), not a valid request. So a generated request that is meant to be valid keeps a
``nextToken`` only if the server issued that token for the same listing (which is how the
stateful phase gets one, through the document's ``nextPage`` links); any other token is
dropped from it. Requests meant to be invalid are sent as generated.

Loaded by ``schemathesis.toml`` (``schemathesis run`` from the repository root) and by
``tests/test_openapi_fuzz.py``.
"""
from __future__ import annotations

from typing import Any

import schemathesis

#: (operation, path parameters and filters) of a listing -> the tokens its responses carried.
ISSUED: dict[tuple[str, tuple[tuple[str, Any], ...]], set[str]] = {}


def _listing(case: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """A listing is its operation, path and filters: a token is good only for the filters it was issued for."""
    query = {name: value for name, value in (case.query or {}).items() if name not in ("limit", "nextToken")}
    parameters = {**(case.path_parameters or {}), **{f"?{name}": value for name, value in query.items()}}
    return case.operation.label, tuple(sorted((name, str(value)) for name, value in parameters.items()))


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if response.status_code != 200:
        return
    try:
        body = response.json()
    except Exception:  # not JSON: not a listing
        return
    if isinstance(body, dict) and isinstance(body.get("nextToken"), str):
        ISSUED.setdefault(_listing(case), set()).add(body["nextToken"])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.query, dict):
        return
    token = case.query.get("nextToken")
    if token is not None and token not in ISSUED.get(_listing(case), set()):
        del case.query["nextToken"]
