"""The one place that talks to API Gateway's ``@connections`` API (DeleteConnection, GetConnection).

The table says what we believe about a socket; API Gateway knows. An admin disconnect
closes the socket for real, and the sweep asks before it marks a row stale. Each row keeps
the management endpoint of its WebSocket API (``https://{domainName}/{stage}``, stored at
``$connect``); the standard ``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI`` replaces it for
every call when set, as botocore does for every other service.

No gateway failure fails an invocation: every call here answers with an outcome (closed,
gone, alive, unreachable) and never raises. The row is the record of what the platform
decided; the socket is closed on a best-effort basis and the caller reports how many were not.

boto3 is imported on the first call, not with this module: most invocations (messages,
reads, a sweep of rows without an endpoint) never talk to the gateway, and boto3 is
provided by the Lambda runtime, not shipped in our package.
"""
from __future__ import annotations

import logging
import random
import re
import threading
import time
from datetime import datetime
from typing import Any, Callable, Protocol

import msgspec

from models.connection import read_timestamp

log = logging.getLogger(__name__)

#: Outcomes of a call that did not answer with a live connection.
GONE = "gone"  # 410: API Gateway has no such connection (closed, or never ours)
UNREACHABLE = "unreachable"  # throttled, failing, refused or out of reach after retries

#: Throttling and server-side failures worth another try. API Gateway answers 429
#: ``LimitExceededException`` when the account's @connections rate is exceeded.
_RETRYABLE_CODES = frozenset({"LimitExceededException", "TooManyRequestsException", "ThrottlingException",
                              "InternalServerErrorException", "ServiceUnavailableException"})
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


class Alive(msgspec.Struct, frozen=True):
    """GetConnection's answer for an open socket (times as API Gateway reports them, or None)."""

    connected_at: datetime | None
    last_active_at: datetime | None


class GatewaySettings(Protocol):
    region: str | None
    gateway_endpoint_override: str | None
    gateway_max_attempts: int
    gateway_backoff_base_ms: int
    gateway_backoff_max_ms: int
    connect_timeout_seconds: int
    read_timeout_seconds: int
    max_pool_connections: int


class Gateway:
    """DeleteConnection and GetConnection with retries; one boto3 client per endpoint.

    Retries are ours, not botocore's: its standard mode does retry a 429
    ``LimitExceededException``, but with a backoff of up to 1 s, 2 s, 4 s... that no setting
    shortens and no test can observe. Here the attempts and the backoff come from the
    settings, with full jitter, and ``sleep`` is injected.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._forbidden_reported = False

    # The two calls -------------------------------------------------------------------

    def close(self, endpoint: str, connection_id: str) -> bool:
        """Close a socket (DeleteConnection). True when it is closed now or was already (410)."""
        answer = self._call(endpoint, "delete_connection", connection_id)
        return answer is GONE or isinstance(answer, dict)

    def probe(self, endpoint: str, connection_id: str) -> Alive | str:
        """GetConnection: :class:`Alive`, ``GONE`` or ``UNREACHABLE``."""
        answer = self._call(endpoint, "get_connection", connection_id)
        if not isinstance(answer, dict):
            return answer
        return Alive(_time(answer.get("ConnectedAt")), _time(answer.get("LastActiveAt")))

    # Internals ------------------------------------------------------------------------

    def target(self, endpoint: str) -> str:
        """Where a row's calls go: the override when set, else the endpoint stored with it."""
        return self.settings.gateway_endpoint_override or endpoint

    def _call(self, endpoint: str, operation: str, connection_id: str) -> dict[str, Any] | str:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        url = self.target(endpoint)
        attempts = max(1, self.settings.gateway_max_attempts)
        reason = ""
        for attempt in range(attempts):
            try:
                return getattr(self._client(url, endpoint), operation)(ConnectionId=connection_id)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code == "GoneException" or status == 410:
                    return GONE
                if code == "ForbiddenException" or status == 403:
                    self._report_forbidden(endpoint, operation)
                    return UNREACHABLE
                if code not in _RETRYABLE_CODES and status not in (429, 500, 502, 503, 504):
                    log.warning("API Gateway refused %s of %s: %s (HTTP %s)", operation, connection_id, code, status)
                    return UNREACHABLE
                reason = code or f"HTTP {status}"
            except (ConnectionError, HTTPClientError) as exc:
                reason = type(exc).__name__
            except Exception as exc:  # credentials, a malformed endpoint: no retry helps
                log.warning("API Gateway %s of %s failed: %s", operation, connection_id, type(exc).__name__)
                return UNREACHABLE
            if attempt + 1 < attempts:
                self._sleep(self._backoff(attempt))
        log.warning("API Gateway %s of %s did not succeed after %d attempts (%s)", operation, connection_id,
                    attempts, reason)
        return UNREACHABLE

    def _backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to base x 2^attempt, capped (seconds)."""
        ceiling = min(self.settings.gateway_backoff_max_ms, self.settings.gateway_backoff_base_ms * 2**attempt)
        return self._jitter() * ceiling / 1000

    def _client(self, url: str, endpoint: str) -> Any:
        client = self._clients.get(url)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                # Imported here: see the module docstring.
                import boto3
                from botocore.config import Config

                config = Config(
                    # One attempt per call to botocore: the retries are ours (see the class).
                    retries={"mode": "standard", "total_max_attempts": 1},
                    connect_timeout=self.settings.connect_timeout_seconds,
                    read_timeout=self.settings.read_timeout_seconds,
                    max_pool_connections=self.settings.max_pool_connections,
                )
                # A boto3 session is not thread-safe; one per client, built under the lock.
                client = boto3.session.Session().client(
                    "apigatewaymanagementapi", endpoint_url=url, region_name=_region(endpoint, self.settings.region),
                    config=config,
                )
                self._clients[url] = client
        return client

    def _report_forbidden(self, endpoint: str, operation: str) -> None:
        """Say once per process which permission the role lacks; every call after that fails alike."""
        with self._lock:
            if self._forbidden_reported:
                return
            self._forbidden_reported = True
        method = "DELETE" if operation == "delete_connection" else "GET"
        log.error(
            "API Gateway refused %s (ForbiddenException): the function's role needs execute-api:ManageConnections "
            "on %s (see deploy/iam-policy.json and the README, 'The gateway'); until then admin disconnects do not "
            "close sockets and the sweep cannot ask the gateway",
            operation, _resource_arn(endpoint, method),
        )


def _time(value: Any) -> datetime | None:
    """botocore parses API Gateway's ISO-8601 times into datetimes; accept text too."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    return read_timestamp(value) if value is not None else None


def _region(endpoint: str, default: str | None) -> str:
    """SigV4 signs for the API's own region, which its default host names."""
    host = _host(endpoint)
    match = _EXECUTE_API_HOST.match(host)
    return match.group(1) if match else (default or "us-east-1")


def _host(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()


def _resource_arn(endpoint: str, method: str) -> str:
    """The ``execute-api`` resource a call needs, as far as the endpoint tells it."""
    host = _host(endpoint)
    match = _EXECUTE_API_HOST.match(host)
    api_id = host.split(".", 1)[0] if match else "<api-id>"
    region = match.group(1) if match else "<region>"
    stage = endpoint.split("://", 1)[-1].partition("/")[2].strip("/") or "<stage>"
    return f"arn:aws:execute-api:{region}:<account>:{api_id}/{stage}/{method}/@connections/*"


def management_endpoint(domain_name: Any, stage: Any) -> str | None:
    """``https://{domainName}/{stage}`` from a ``$connect`` event; None unless both look like API Gateway's."""
    if not isinstance(domain_name, str) or not isinstance(stage, str):
        return None
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?", domain_name) or not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", stage):
        return None
    return f"https://{domain_name}/{stage}"
