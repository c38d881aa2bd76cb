"""Logs, audit lines and metrics.

Structured JSON lines in Lambda (CloudWatch Logs Insights can query them), readable text
locally. Metrics are CloudWatch Embedded Metric Format records printed to stdout, which
CloudWatch turns into metrics without any API call from the function.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

SERVICE = "connection-manager"
NAMESPACE = "ConnectionManager"

_audit_log = logging.getLogger("connection_manager.audit")
_configured = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": SERVICE,
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
        }
        line.update(getattr(record, "fields", {}))
        request_id = getattr(_request, "id", None)
        if request_id:
            line["requestId"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _Request:
    id: str | None = None


_request = _Request()


def setup_logging(json_lines: bool | None = None) -> None:
    """Configure the root logger once: JSON in Lambda, text elsewhere."""
    global _configured
    if _configured:
        return
    _configured = True
    if json_lines is None:
        json_lines = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    # Locally stdout belongs to the command's own output (``invoke`` prints JSON there).
    handler = logging.StreamHandler(sys.stdout if json_lines else sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("pynamodb").setLevel(logging.WARNING)


def set_request_id(request_id: str | None) -> None:
    _request.id = request_id


def audit(principal: str, action: str, target: str, outcome: str, details: dict[str, Any] | None = None) -> None:
    """One line per state change: who, what, on which connection or user, and how it ended."""
    fields = {"audit": True, "principal": principal, "action": action, "target": target, "outcome": outcome}
    if details:
        fields.update(details)
    _audit_log.info("audit %s %s %s -> %s", principal, action, target, outcome, extra={"fields": fields})


def emit_metrics(values: dict[str, tuple[float, str]], dimensions: dict[str, str] | None = None) -> None:
    """Print one CloudWatch Embedded Metric Format record (in Lambda; a debug line elsewhere)."""
    import time

    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        logging.getLogger("connection_manager.metrics").debug("metrics %s %s", values, dimensions or {})
        return

    dims = {"service": SERVICE, **(dimensions or {})}
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [list(dims)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                }
            ],
        },
        **dims,
        **{name: value for name, (value, _) in values.items()},
    }
    print(json.dumps(record), flush=True)


def record_sweep(result: Any) -> None:
    if result.dry_run:
        return
    emit_metrics(
        {
            "StaleConnectionsCleaned": (result.cleaned, "Count"),
            "SweepWritesFailed": (result.failed, "Count"),
            "SweepDuration": (result.duration_ms, "Milliseconds"),
            "SweepIncomplete": (0 if result.complete else 1, "Count"),
        }
    )


def record_error(code: str) -> None:
    emit_metrics({"Errors": (1, "Count")}, {"code": code})
