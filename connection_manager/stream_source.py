"""Wire the table's stream to the function after each ``zappa deploy`` / ``zappa update``.

Zappa's ``events`` cannot do it: its DynamoDB event source sends no ``StartingPosition``
(which Lambda requires for a stream) and no ``FunctionResponseTypes`` (without
``ReportBatchItemFailures`` one unpublished event would retry the whole batch), and the
stream's ARN ends in a label DynamoDB picks when the stream is made, so it cannot be
written in the settings. This is Zappa's ``post`` callback instead: it finds the stream of
the stage's table and creates or updates the one event source mapping, only while the
stage sets ``PRESENCE_EVENT_BUS`` (with presence off, a mapping would invoke the function
for every write for nothing, so an existing one is removed).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Where a new mapping starts: every record the stream still holds (24 hours).
STARTING_POSITION = "TRIM_HORIZON"
BATCH_SIZE = 100
#: A batch waits at most this long to fill: presence is late by at most this much.
BATCH_WINDOW_SECONDS = 1


def mapping_settings() -> dict[str, Any]:
    """The event source mapping's settings (the ARN and function are added at deploy)."""
    return {
        "StartingPosition": STARTING_POSITION,
        "BatchSize": BATCH_SIZE,
        "MaximumBatchingWindowInSeconds": BATCH_WINDOW_SECONDS,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }


def wire(zappa_cli: Any) -> str:
    """Zappa ``post`` callback: make the stage's stream mapping match its settings."""
    variables = zappa_cli.aws_environment_variables or {}
    session = zappa_cli.zappa.boto_session
    function = zappa_cli.lambda_name
    try:
        return wire_stream(session.client("dynamodb"), session.client("lambda"), variables, function)
    except Exception as exc:  # noqa: BLE001 - the deploy itself succeeded; say what is left to do
        return _say(f"stream not wired ({exc}); create the table (`connection-manager create-table`) "
                    "or `migrate` it, then run `zappa update` again")


def wire_stream(dynamodb: Any, lambda_client: Any, variables: dict[str, str], function: str) -> str:
    """Create, update or remove the mapping; answers what it did, also printed for the deployer."""
    table = variables.get("CONNECTIONS_TABLE_NAME", "")
    stream = dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
    existing = lambda_client.list_event_source_mappings(FunctionName=function).get("EventSourceMappings", [])
    ours = [m for m in existing if ":table/" + table + "/stream/" in m.get("EventSourceArn", "")]
    if not variables.get("PRESENCE_EVENT_BUS"):
        for mapping in ours:
            lambda_client.delete_event_source_mapping(UUID=mapping["UUID"])
        return _say(f"presence off (no PRESENCE_EVENT_BUS): {len(ours)} stream mapping(s) removed")
    if not stream:
        return _say(f"table {table} has no stream: run `connection-manager migrate`, then `zappa update`")
    settings = mapping_settings()
    current = [m for m in ours if m.get("EventSourceArn") == stream]
    for stale in (m for m in ours if m.get("EventSourceArn") != stream):
        lambda_client.delete_event_source_mapping(UUID=stale["UUID"])  # a stream replaced since
    if current:
        changes = {key: value for key, value in settings.items() if key != "StartingPosition"}
        lambda_client.update_event_source_mapping(UUID=current[0]["UUID"], FunctionName=function, Enabled=True,
                                                  **changes)
        return _say(f"stream mapping of {table} updated")
    lambda_client.create_event_source_mapping(EventSourceArn=stream, FunctionName=function, Enabled=True, **settings)
    return _say(f"stream of {table} wired to {function}")


def _say(message: str) -> str:
    print(f"connection-manager: {message}")
    return message
