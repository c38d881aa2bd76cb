"""Hand the events our handler does not own to Zappa's own Lambda handler.

The deployed function's Lambda Handler is ``connection_manager.handler.lambda_handler``
(the ``lambda_handler`` Zappa setting). Zappa still ships its own handler: ``zappa package``
copies ``zappa/handler.py`` to the root of the zip as the module ``handler`` and writes the
stage's settings next to it as the module ``zappa_settings``. That handler turns API Gateway
HTTP requests into WSGI calls on the Flask app and runs ``{"command": ...}`` invocations;
this module is the one door to it.

API (what the raw handler relies on):

``delegate(event, context) -> Any``
    Returns whatever Zappa's handler returns for ``event`` (an API Gateway proxy response
    dict for HTTP requests, a command's return value, ``None`` for events Zappa ignores).
    Errors raised inside Zappa's handler or the Flask app propagate unchanged.

``UnrecognizedEventError``
    A :class:`~connection_manager.errors.ValidationError` (status 400, code
    ``ValidationError``) raised instead of delegating when

    * the code is not running from a Zappa package (no ``zappa_settings`` / ``handler``
      module at the package root: tests, the CLI, a plain ``pip install``), or
    * the event is already being delegated: a ``{"command":
      "connection_manager.handler.lambda_handler"}`` invocation without an ``action`` makes
      Zappa's handler call our handler again with the same event, which would otherwise
      loop until the stack ran out.

    The raw handler maps it like any other ``ConnectionManagerError``:
    ``{"statusCode": 400, "body": {"error": "ValidationError", "message": ...}}``.

``in_zappa_package() -> bool``
    Whether Zappa's runtime modules are importable here.

Importing this module is cheap: Zappa's handler (and with it werkzeug and, on the first
HTTP request, Flask) is imported only inside :func:`delegate`, so a raw-action or
scheduled invocation never pays for it.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from connection_manager.errors import ValidationError

#: Module names ``zappa package`` gives Zappa's handler and the stage settings at the zip root.
ZAPPA_HANDLER_MODULE = "handler"
ZAPPA_SETTINGS_MODULE = "zappa_settings"

# Identities of the events being delegated right now (a Lambda process serves one at a time).
_in_flight: set[int] = set()


class UnrecognizedEventError(ValidationError):
    """An event that neither our handler nor (here) Zappa's handler can serve: a 400."""


def in_zappa_package() -> bool:
    """True inside a package built by ``zappa package`` / ``zappa deploy``.

    Both modules are checked: a ``zappa_settings.py`` alone (``zappa
    save-python-settings-file`` writes one into the working tree) does not make the
    working tree a Lambda package.
    """
    return all(
        importlib.util.find_spec(name) is not None for name in (ZAPPA_SETTINGS_MODULE, ZAPPA_HANDLER_MODULE)
    )


def delegate(event: Any, context: Any) -> Any:
    """Run ``event`` through Zappa's handler and return its answer.

    Raises :class:`UnrecognizedEventError` outside a Zappa package and on re-entry with
    the same event.
    """
    if not in_zappa_package():
        raise UnrecognizedEventError(
            "Unrecognized event: expected an object with an `action`, a scheduled event or an "
            "API Gateway WebSocket event (HTTP requests and Zappa commands are served only by "
            "the deployed package)"
        )
    key = id(event)
    if key in _in_flight:
        raise UnrecognizedEventError(
            "Unrecognized event: a Zappa command invoking this handler must carry an `action`"
        )
    zappa_handler = importlib.import_module(ZAPPA_HANDLER_MODULE)
    _in_flight.add(key)
    try:
        return zappa_handler.lambda_handler(event, context)
    finally:
        _in_flight.discard(key)
