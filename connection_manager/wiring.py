"""The composition root: the one place that builds this process's objects.

It reads :class:`Settings`, binds the table model once, builds the service once, and
hands that service to every front door: the Lambda handler, the Flask app factory, the
CLI and ``serve``. Those only adapt their input to the service; none of them builds one.

The Lambda handler imports this module on a cold start, so it imports only what the
service itself needs (never Flask), and builds nothing until the first request: a
broken configuration then fails that request with one clear message, not the import,
and the log names it once per container (a missing signing key as a warning: only
paging needs it).
"""
from __future__ import annotations

import logging

from connection_manager.clock import Clock, utc_now
from connection_manager.config import Settings
from connection_manager.errors import ConfigurationError
from connection_manager.service import ConnectionService
from models.connection import ConnectionModel, configure

log = logging.getLogger(__name__)

_service: ConnectionService | None = None
#: A configuration error is logged by the first request that meets it, not by every one.
_reported = False


def build_service(settings: Settings, clock: Clock = utc_now) -> ConnectionService:
    """Bind the shared model to ``settings``' table and build the service on it.

    Meant to run once per process (tests run it once per test); a second table in the
    same process is a ``ConnectionService(settings)`` of its own, which never rebinds this one.
    """
    configure(settings)
    return ConnectionService(settings, clock, ConnectionModel)


def get_service() -> ConnectionService:
    """The process-wide service, built from the environment on first use."""
    global _service, _reported
    if _service is None:
        from connection_manager.signing_key import describe_problem

        try:
            settings = Settings.from_env()
        except ConfigurationError as exc:
            if not _reported:
                _reported = True
                log.error("%s", exc.message)
            raise
        problem = describe_problem(settings)
        if problem:
            log.warning("paging is unavailable until this is fixed: %s (every other operation works)", problem)
        _service = build_service(settings)
    return _service
