"""Logs, audit lines and metrics, with Powertools for AWS Lambda.

In Lambda every log line is one JSON object made by Powertools' formatter (level, location,
message, timestamp, service, the invocation's ``function_request_id`` and ``cold_start``,
the X-Ray trace id, and each record's extra fields), so CloudWatch Logs Insights can query
them; metrics are CloudWatch Embedded Metric Format records printed by Powertools' EMF
provider, which CloudWatch turns into metrics without an API call from the function.
Elsewhere (CLI, local server, tests) logs are readable text on stderr and metrics are
debug lines.

Powertools is imported on the first JSON line or metric, not with this module: whichever
submodule is asked for, its package ``__init__`` loads logger, metrics and tracer (~15 ms),
and a raw read that logs nothing should not pay that on a cold start.

Secrets never reach a log line: the values of ``ADMIN_TOKEN``, the AWS secret key and
session token, and the pagination token secret are replaced in every finished line, and
extra fields named like credentials (``Authorization``...) are masked.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any, Callable

SERVICE = "connection-manager"
NAMESPACE = "ConnectionManager"
REDACTED = "***"

_audit_log = logging.getLogger("connection_manager.audit")
_metrics_log = logging.getLogger("connection_manager.metrics")
log = logging.getLogger(__name__)

_SECRET_ENV = ("ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PAGINATION_TOKEN_SECRET")
_SECRET_FIELDS = frozenset(
    {"authorization", "x-admin-token", "admin_token", "admintoken", "cookie", "password", "secret", "x-amz-security-token"}
)
#: Attributes of every LogRecord; an extra field with one of these names would be refused.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_configured = False
_cold_start = True
_formatter: "_Formatter | None" = None
#: Appended to every JSON line (what Powertools' ``inject_lambda_context`` would add).
_keys: dict[str, Any] = {}


def in_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def metrics_enabled() -> bool:
    """EMF records only mean something in Lambda, where CloudWatch reads stdout."""
    return in_lambda()


def redact(text: str) -> str:
    """Replace every configured secret value in ``text`` (plain and JSON-escaped)."""
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if not secret or len(secret) < 4:
            continue  # a short value would blank out ordinary words
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


class _Formatter(logging.Formatter):
    """Formats with a formatter built on first use, then strips secrets from the line."""

    def __init__(self, build: Callable[[], logging.Formatter]) -> None:
        super().__init__()
        self._build = build
        self._inner: logging.Formatter | None = None
        self._lock = threading.Lock()

    @property
    def inner(self) -> logging.Formatter:
        if self._inner is None:
            with self._lock:
                if self._inner is None:
                    self._inner = self._build()
        return self._inner

    def format(self, record: logging.LogRecord) -> str:
        # A copy: other handlers (a test's log capture) see the record as it was logged.
        attributes = {
            key: REDACTED if key.lower() in _SECRET_FIELDS else value
            for key, value in vars(record).items()
            if key != "fields"  # audit() keeps its fields there too, for in-process readers
        }
        return redact(self.inner.format(logging.makeLogRecord(attributes)))

    def refresh_keys(self) -> None:
        if self._inner is not None and hasattr(self._inner, "append_keys"):
            _apply_keys(self._inner)


def _apply_keys(formatter: Any) -> None:
    formatter.remove_keys([key for key, value in _keys.items() if value is None])
    formatter.append_keys(**{key: value for key, value in _keys.items() if value is not None})


def _powertools_formatter() -> logging.Formatter:
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    formatter = LambdaPowertoolsFormatter(service=SERVICE, utc=True, use_rfc3339=True)
    _apply_keys(formatter)
    return formatter


def _text_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


class _CurrentStream:
    """``sys.stdout``/``sys.stderr`` as they are when a line is written, not when logging was set up
    (a test's output capture or a command's redirect may replace them in between)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return getattr(sys, self._name).write(text)

    def flush(self) -> None:
        getattr(sys, self._name).flush()


def setup_logging(json_lines: bool | None = None, *, force: bool = False) -> None:
    """Configure the root logger once: Powertools JSON on stdout in Lambda, text on stderr elsewhere.

    ``force`` reconfigures (tests switch between the two modes).
    """
    global _configured, _formatter
    if _configured and not force:
        return
    _configured = True
    if json_lines is None:
        json_lines = in_lambda()
    # Locally stdout belongs to the command's own output (``invoke`` prints JSON there).
    handler = logging.StreamHandler(_CurrentStream("stdout" if json_lines else "stderr"))
    _formatter = _Formatter(_powertools_formatter if json_lines else _text_formatter)
    handler.setFormatter(_formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    # Audit lines are a record of state changes, not chatter: LOG_LEVEL never hides them.
    _audit_log.setLevel(logging.INFO)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("pynamodb").setLevel(logging.WARNING)


def set_request_id(request_id: str | None) -> None:
    """Tag every following line with this invocation, as ``inject_lambda_context`` would."""
    global _cold_start
    if request_id:
        _keys.update(
            function_request_id=request_id,
            function_name=os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            function_memory_size=os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            cold_start=_cold_start,
        )
        _cold_start = False
    else:
        _keys.update(function_request_id=None, cold_start=None)
    if _formatter is not None:
        _formatter.refresh_keys()


def audit(principal: str, action: str, target: str, outcome: str, details: dict[str, Any] | None = None) -> None:
    """One line per state change: who, what, on which connection or user, and how it ended."""
    fields: dict[str, Any] = {"audit": True, "principal": principal, "action": action, "target": target, "outcome": outcome}
    for key, value in (details or {}).items():
        fields[f"detail_{key}" if key in _RESERVED or key in fields else key] = value
    _audit_log.info("audit %s %s %s -> %s", principal, action, target, outcome, extra={**fields, "fields": fields})


def emit_metrics(values: dict[str, tuple[float, str]], dimensions: dict[str, str] | None = None) -> None:
    """Print one CloudWatch EMF record (in Lambda; a debug line elsewhere). Never raises."""
    if not metrics_enabled():
        _metrics_log.debug("metrics %s %s", values, dimensions or {})
        return
    try:
        from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

        provider = AmazonCloudWatchEMFProvider(namespace=NAMESPACE, service=SERVICE)
        for name, (value, unit) in values.items():
            provider.add_metric(name=name, unit=unit, value=value)
        for name, value in (dimensions or {}).items():
            provider.add_dimension(name=name, value=value)
        provider.flush_metrics(raise_on_empty_metrics=True)
    except Exception:  # a metric must never fail the request it describes
        log.warning("could not emit metrics %s", sorted(values), exc_info=True)


def record_sweep(result: Any) -> None:
    if result.dry_run:
        return
    emit_metrics(
        {
            "StaleConnectionsCleaned": (result.cleaned, "Count"),
            "LifetimeConnectionsCleaned": (result.lifetime, "Count"),
            "SweepWritesFailed": (result.failed, "Count"),
            "SweepDuration": (result.duration_ms, "Milliseconds"),
            "SweepIncomplete": (0 if result.complete else 1, "Count"),
            "GoneConnections": (result.gone, "Count"),
            "ReconciledConnections": (result.reconciled, "Count"),
            "UnreconciledConnections": (result.unreconciled, "Count"),
        }
    )


def record_evictions(count: int) -> None:
    """Connections the per-user cap DISCONNECTED on a registration."""
    emit_metrics({"ConnectionsEvicted": (count, "Count")})


def record_sockets_not_closed(count: int) -> None:
    """Admin disconnects whose socket API Gateway could not be made to close (the rows are marked)."""
    emit_metrics({"SocketsNotClosed": (count, "Count")})


def record_active_connections(count: int) -> None:
    """The live-connection gauge, emitted once per scheduled sweep."""
    emit_metrics({"ActiveConnections": (count, "Count")})


def record_activity_failure(code: str) -> None:
    """A message's activity write that failed after retries; the message itself still got its 200."""
    emit_metrics({"ActivityWritesFailed": (1, "Count")}, {"code": code})


def record_error(code: str) -> None:
    emit_metrics({"Errors": (1, "Count")}, {"code": code})


def record_unrecognized_event(source: str) -> None:
    """Another service's event reached the function: a misconfigured trigger somebody must remove."""
    emit_metrics({"UnrecognizedEvents": (1, "Count")}, {"source": source})


def record_presence(done: Any) -> None:
    """One stream batch: changes applied, events published, records skipped (by cause), and
    whether a record was given back to Lambda."""
    values = {
        "PresenceChanges": (done.changes, "Count"),
        "PresenceDuplicates": (done.duplicates, "Count"),
        "PresenceEventsPublished": (done.published, "Count"),
        "PresenceRecordsSkipped": (sum(done.skipped.values()), "Count"),
        "PresenceRecordsFailed": (1 if done.failed else 0, "Count"),
    }
    emit_metrics(values)
    for cause, count in done.skipped.items():
        emit_metrics({"PresenceRecordsSkipped": (count, "Count")}, {"cause": cause})
