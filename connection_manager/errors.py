"""One error hierarchy for every front door.

Each error knows its HTTP status and a stable code; the raw Lambda handler and the Flask
app both turn it into ``{"error": code, "message": message}`` with that status, so the
two cannot disagree about what a failure looks like.
"""
from __future__ import annotations

from typing import Any


class ConnectionManagerError(Exception):
    """Base of every error a caller may see. Never carries a stack trace or credentials."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


class ConfigurationError(ConnectionManagerError):
    """The environment is wrong; raised once at start, before any request is served."""

    code = "ConfigurationError"


class ValidationError(ConnectionManagerError):
    status = 400
    code = "ValidationError"


class UnauthorizedError(ConnectionManagerError):
    status = 401
    code = "Unauthorized"


class ForbiddenError(ConnectionManagerError):
    status = 403
    code = "Forbidden"


class NotFoundError(ConnectionManagerError):
    status = 404
    code = "NotFound"


class MethodNotAllowedError(ConnectionManagerError):
    status = 405
    code = "MethodNotAllowed"


class ConflictError(ConnectionManagerError):
    status = 409
    code = "Conflict"


class UnsupportedMediaTypeError(ConnectionManagerError):
    status = 415
    code = "UnsupportedMediaType"


class UnavailableError(ConnectionManagerError):
    """DynamoDB throttled, failed or was unreachable after the configured retries."""

    status = 503
    code = "ServiceUnavailable"


class InternalError(ConnectionManagerError):
    """A bug. The message is generic on purpose; the details go to the log only."""

    status = 500
    code = "InternalError"
