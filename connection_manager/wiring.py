"""The composition root: the one place that builds this process's objects.

It reads :class:`Settings`, binds the table model once, builds the service once, and
hands that service to every front door: the Lambda handler, the Flask app factory, the
CLI and ``serve``. Those only adapt their input to the service; none of them builds one.

The Lambda handler imports this module on a cold start, so it imports only what the
service itself needs (never Flask), and builds nothing until the first request: a
broken configuration then fails that request with one clear message, not the import.
"""
from __future__ import annotations

from connection_manager.clock import Clock, utc_now
from connection_manager.config import Settings
from connection_manager.service import ConnectionService
from models.connection import ConnectionModel, configure

_service: ConnectionService | None = None


def build_service(settings: Settings, clock: Clock = utc_now) -> ConnectionService:
    """Bind the shared model to ``settings``' table and build the service on it.

    Meant to run once per process (tests run it once per test); a second table in the
    same process is a ``ConnectionService(settings)`` of its own, which never rebinds this one.
    """
    configure(settings)
    return ConnectionService(settings, clock, ConnectionModel)


def get_service() -> ConnectionService:
    """The process-wide service, built from the environment on first use."""
    global _service
    if _service is None:
        _service = build_service(Settings.from_env())
    return _service
