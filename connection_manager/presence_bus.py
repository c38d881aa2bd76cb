"""Publish presence events to EventBridge with ``PutEvents``: retried, and never lost silently.

``PutEvents`` fails two ways: the whole call (throttling, a 500, a missing bus or
permission) or some of its entries (``FailedEntryCount``, an ``ErrorCode`` per entry).
Entries that failed for a reason that passes (throttling, internal errors) are sent again
with exponential backoff and jitter; what still failed is returned, so the caller reports
its stream record to Lambda and nothing is acknowledged unpublished. A bus that does not
exist or a role without ``events:PutEvents`` is logged once per process, naming the bus.

boto3 is imported on the first publish, and the client honours the standard
``AWS_ENDPOINT_URL_EVENTBRIDGE``.
"""
from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Callable

from connection_manager.presence_events import SOURCE

log = logging.getLogger(__name__)

#: Entries per ``PutEvents`` call: EventBridge's limit.
BATCH = 10
#: Calls per entry before it is given back as failed.
ATTEMPTS = 4
BASE_DELAY_SECONDS = 0.05
#: Errors no retry mends: the bus's name or the role's policy must change.
_FATAL = frozenset({"ResourceNotFoundException", "AccessDeniedException", "AccessDenied", "ValidationException",
                    "UnrecognizedClientException", "InvalidSignatureException"})

#: A published event: (detail type, detail with its ``eventId``).
Event = tuple[str, dict[str, Any]]


class EventBus:
    """The bus ``name``; ``client`` (a boto3 ``events`` client) is made on first use unless given."""

    def __init__(self, name: str, region: str | None = None, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self._region = region
        self._client = client
        self._sleep = sleep
        self._reported: set[str] = set()

    def publish(self, events: list[Event]) -> tuple[set[str], str | None]:
        """Send ``events``; answers the ``eventId`` of each one still unpublished, and why."""
        failed: set[str] = set()
        problem = None
        for start in range(0, len(events), BATCH):
            left, why = self._send(events[start:start + BATCH])
            failed |= left
            problem = problem or why
        return failed, problem

    def _send(self, events: list[Event]) -> tuple[set[str], str | None]:
        pending, why = list(events), None
        for attempt in range(ATTEMPTS):
            if attempt:
                self._sleep(BASE_DELAY_SECONDS * (2 ** attempt) * (0.5 + random.random()))
            try:
                answer = self._events().put_events(Entries=[self._entry(event) for event in pending])
            except Exception as exc:  # noqa: BLE001 - botocore's errors, named below
                code = _code_of(exc)
                why = f"PutEvents to bus {self.name!r} failed: {code}: {exc}"
                if code in _FATAL:
                    self._report_once(code, why)
                    break
                continue
            results = answer.get("Entries") or []
            retry = [event for event, result in zip(pending, results) if result.get("ErrorCode")]
            if len(results) < len(pending):  # an answer without a result per entry: resend the rest
                retry += pending[len(results):]
            if not retry:
                return set(), None
            codes = sorted({str(result.get("ErrorCode")) for result in results if result.get("ErrorCode")})
            why = f"PutEvents to bus {self.name!r}: {len(retry)} of {len(pending)} entries failed ({', '.join(codes)})"
            pending = retry
        return {detail["eventId"] for _, detail in pending}, why

    def _entry(self, event: Event) -> dict[str, Any]:
        detail_type, detail = event
        return {"Source": SOURCE, "DetailType": detail_type, "Detail": json.dumps(detail, separators=(",", ":")),
                "EventBusName": self.name}

    def _events(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("events", region_name=self._region)
        return self._client

    def _report_once(self, code: str, message: str) -> None:
        if code not in self._reported:
            self._reported.add(code)
            log.error("%s: presence events are not published until this is fixed", message)


def _code_of(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or type(exc).__name__)
    return type(exc).__name__
