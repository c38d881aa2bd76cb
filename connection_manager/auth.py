"""Who is calling the admin API, and may they change state.

Two deployments, two authorities:

* **Behind API Gateway (Lambda).** The API is IAM-authorized, so API Gateway has already
  checked the caller's SigV4 signature before the request reaches the function. Zappa
  hands the original API Gateway event to the app in the WSGI environ (``lambda.event``;
  older Zappa releases and serverless-wsgi use ``serverless.event``), and the caller is
  ``requestContext.identity.userArn`` (REST APIs) or ``requestContext.authorizer.iam``
  (HTTP APIs). The principal is ``iam:<arn>``. The bearer token is not consulted for
  these requests: with SigV4 the ``Authorization`` header carries the signature. An
  event *without* a caller identity means the API is not IAM-authorized; state changes
  are then refused (fail closed) unless an admin token is configured and presented.
* **Anywhere else (a laptop, a container).** The server binds to loopback by default.
  When ``ADMIN_TOKEN`` is set, every API request but ``/health`` needs ``Authorization:
  Bearer <token>`` (compared in constant time), reads included: connection ids, source
  IPs and user agents are not for whoever reaches the port. A missing token is 401, a
  wrong one 403. The pages (dashboard, docs, this API's document) carry no data and stay
  open: the dashboard is how a browser asks for the token and sends it. A change a
  browser sends with an ``Origin`` of another site is refused (403), so a web page
  cannot use the operator's browser to POST to the loopback server.

This module knows WSGI environs and headers, not Flask, so it is testable on its own.
"""
from __future__ import annotations

import hmac
from typing import Any, Mapping
from urllib.parse import urlsplit

from connection_manager.errors import ForbiddenError, UnauthorizedError, ValidationError

#: Where Zappa (``lambda.event``) and serverless-wsgi (``serverless.event``) put the API Gateway event.
EVENT_KEYS = ("lambda.event", "serverless.event")

LOCAL_OPERATOR = "local:operator"
LOCAL_TOKEN_HOLDER = "local:token-holder"
ANONYMOUS = "anonymous"


def gateway_event(environ: Mapping[str, Any]) -> dict[str, Any] | None:
    """The API Gateway event this request came from, or None when not running behind it."""
    for key in EVENT_KEYS:
        event = environ.get(key)
        if isinstance(event, dict):
            return event
    return None


def iam_identity(event: Mapping[str, Any]) -> str | None:
    """The IAM caller of an API Gateway request (REST v1 or HTTP API v2), if there is one."""
    context = _mapping(event.get("requestContext"))
    authorizer_iam = _mapping(_mapping(context.get("authorizer")).get("iam"))
    return _first_string(_mapping(context.get("identity")), ("userArn", "caller")) or _first_string(
        authorizer_iam, ("userArn", "callerId")
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _first_string(source: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def caller(environ: Mapping[str, Any]) -> str:
    """A best-effort name for the caller, for audit lines of requests that were refused."""
    event = gateway_event(environ)
    if event is not None:
        arn = iam_identity(event)
        return f"iam:{arn}" if arn else "iam:unknown"
    return f"local:{ANONYMOUS}"


def authorize_change(
    environ: Mapping[str, Any],
    authorization: str | None,
    admin_token: str | None,
    origin: str | None = None,
    host: str | None = None,
) -> str:
    """Return the principal allowed to make a state change, or raise 401/403.

    ``environ`` is the request's WSGI environ, ``authorization`` its Authorization header,
    ``admin_token`` the configured token (None when not set), ``origin`` and ``host`` the
    request's Origin and Host headers.
    """
    event = gateway_event(environ)
    if event is not None:
        arn = iam_identity(event)
        if arn:
            return f"iam:{arn}"
        if not admin_token:
            raise ForbiddenError(
                "The request carries no IAM caller identity; state changes need the API to be IAM-authorized"
            )
        return _check_token(authorization, admin_token, "iam:unknown+token-holder")
    refuse_cross_site(origin, host)
    if not admin_token:
        return LOCAL_OPERATOR
    return _check_token(authorization, admin_token, LOCAL_TOKEN_HOLDER)


def authorize_read(environ: Mapping[str, Any], authorization: str | None, admin_token: str | None) -> str:
    """Return the principal allowed to read connection data, or raise 401/403.

    Behind API Gateway, IAM authorization has already admitted the caller (a read needs
    no caller identity: API Gateway refuses unsigned requests before they get here).
    """
    event = gateway_event(environ)
    if event is not None:
        arn = iam_identity(event)
        return f"iam:{arn}" if arn else "iam:unknown"
    if not admin_token:
        return LOCAL_OPERATOR
    return _check_token(authorization, admin_token, LOCAL_TOKEN_HOLDER)


def refuse_foreign_host(host: str | None, allowed: tuple[str, ...]) -> None:
    """Refuse a request whose Host is not one of ``allowed`` (DNS rebinding).

    A page on another site can rebind its own name to 127.0.0.1 or ::1 and then read and
    change this server as a same-origin page; its requests still carry that site's name
    in Host. Bracketed IPv6 hosts (``[::1]:8080``) are parsed too.
    """
    try:
        name = urlsplit("//" + (host or "")).hostname
    except ValueError:
        name = None
    if name is None or name not in allowed:
        raise ValidationError(f"Host {host!r} is not a name of this server")


def refuse_cross_site(origin: str | None, host: str | None) -> None:
    """Refuse a change a browser sends on behalf of another site.

    Without a token, a page on any site could otherwise make the operator's browser POST
    to the loopback server (an empty-bodied POST needs no CORS preflight). Browsers send
    ``Origin`` with every POST and PATCH; tools such as curl send none and are not affected.
    """
    if origin is None:
        return
    if not host or urlsplit(origin).netloc.lower() != host.lower():
        raise ForbiddenError("Cross-site request refused: the Origin does not match this server")


def _check_token(authorization: str | None, admin_token: str, principal: str) -> str:
    presented = bearer_token(authorization)
    if presented is None:
        raise UnauthorizedError("This request needs `Authorization: Bearer <admin token>`")
    if not token_matches(presented, admin_token):
        raise ForbiddenError("The admin token is not valid")
    return principal
