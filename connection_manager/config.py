"""Settings read from the environment once, validated once, frozen.

A bad value stops the process at start with one message naming every problem, instead
of surfacing as a stack trace in the middle of some later request.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from connection_manager.errors import ConfigurationError

DEFAULT_TABLE_NAME = "connections"
#: Shorter pagination secrets can be guessed offline from one token.
MIN_TOKEN_SECRET_CHARS = 16

#: Signs pagination tokens when ``PAGINATION_TOKEN_SECRET`` is unset outside Lambda. One
#: process (the local server, one CLI command) issues and accepts its own tokens, and no
#: one else can know the secret; a restart only invalidates tokens of pages in flight.
_PROCESS_TOKEN_SECRET = secrets.token_urlsafe(32)


def process_token_secret() -> str:
    return _PROCESS_TOKEN_SECRET


#: The standard AWS variable that points every ``@connections`` call somewhere else.
GATEWAY_ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"


def _gateway_override_from_environment() -> str | None:
    """Settings built in code honour the standard variable too, as botocore does for every client:
    a test or script that builds ``Settings(...)`` cannot send a call to a real API by accident."""
    return os.environ.get(GATEWAY_ENDPOINT_VARIABLE, "").strip() or None


@dataclass(frozen=True)
class Settings:
    table_name: str = DEFAULT_TABLE_NAME
    stale_after_seconds: int = 3600
    region: str | None = None
    retention_seconds: int = 7 * 24 * 3600
    max_retry_attempts: int = 3
    # DynamoDB answers in milliseconds; short timeouts bound how long one write can hold
    # a sweep past its margin: (2 s + 5 s) x 4 tries plus backoff stays under 40 s.
    connect_timeout_seconds: int = 2
    read_timeout_seconds: int = 5
    sweep_concurrency: int = 16
    sweep_time_margin_ms: int = 40_000
    default_page_size: int = 100
    #: A WebSocket message writes ``lastActiveAt`` at most once per this many seconds per
    #: connection (0: every message). 300 s cuts activity writes of a chatty connection to
    #: one per 5 minutes while a connection with a message in the last
    #: ``stale_after_seconds - 300`` seconds is never swept (README, "Capacity model").
    activity_write_interval_seconds: int = 300
    #: Connections that remembered activity times are kept for, per process (LRU).
    activity_memory_size: int = 100_000
    #: The scale the live index is sized for (README, "Capacity model").
    capacity_connections: int = 1_000_000
    #: A CONNECTED row created longer ago than this is DISCONNECTED by the sweep (reason
    #: ``lifetime``), whatever its activity: API Gateway closes every connection after 2 h.
    max_connection_lifetime_seconds: int = 7200
    #: At most this many CONNECTED rows per user; a registration beyond it evicts the
    #: user's oldest (reason ``evicted``). 0: no cap.
    max_connections_per_user: int = 0
    #: Where every API Gateway ``@connections`` call goes instead of the endpoint stored at
    #: ``$connect`` (``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI``).
    gateway_endpoint_override: str | None = field(default_factory=_gateway_override_from_environment)
    #: Tries per gateway call; throttling (429), 5xx and connection failures are retried
    #: with full-jitter exponential backoff from base to max.
    gateway_max_attempts: int = 3
    gateway_backoff_base_ms: int = 100
    gateway_backoff_max_ms: int = 2000
    token_secret: str | None = field(default=None, repr=False)
    #: The SSM SecureString holding the signing keys, one per line, newest first.
    token_key_parameter: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    #: The EventBridge bus presence events go to (``PRESENCE_EVENT_BUS``); None: presence is off.
    presence_event_bus: str | None = None
    in_lambda: bool = False

    @property
    def live_shards(self) -> int:
        """Partition key values of the live index, from the capacity model (never a constant)."""
        from connection_manager.capacity import live_shards

        return live_shards(self.capacity_connections, self.activity_write_interval_seconds)

    @property
    def max_pool_connections(self) -> int:
        # One HTTP connection per concurrent sweep write, plus room for the reads.
        return self.sweep_concurrency + 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        problems: list[str] = []
        in_lambda = bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))

        table_name = env.get("CONNECTIONS_TABLE_NAME", "").strip()
        if not table_name:
            if in_lambda:
                problems.append("CONNECTIONS_TABLE_NAME is required when running in AWS Lambda")
            table_name = DEFAULT_TABLE_NAME

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw.strip())
            except ValueError:
                problems.append(f"{name} must be a whole number, got {raw!r}")
                return default
            if not low <= value <= high:
                problems.append(f"{name} must be between {low} and {high}, got {value}")
                return default
            return value

        stale = integer("STALE_AFTER_SECONDS", 3600, 1, 365 * 24 * 3600)
        retention = integer("DISCONNECTED_RETENTION_SECONDS", 7 * 24 * 3600, 0, 10 * 365 * 24 * 3600)
        retries = integer("DYNAMODB_MAX_RETRIES", 3, 0, 10)
        concurrency = integer("SWEEP_CONCURRENCY", 16, 1, 128)
        margin = integer("SWEEP_TIME_MARGIN_MS", 40_000, 0, 600_000)
        page = integer("DEFAULT_PAGE_SIZE", 100, 1, 1000)
        # The default never exceeds half the stale period, so a short STALE_AFTER_SECONDS
        # keeps a meaningful guarantee; a value set explicitly must leave room on its own.
        interval = integer("ACTIVITY_WRITE_INTERVAL_SECONDS", min(300, stale // 2), 0, 300)
        memory = integer("ACTIVITY_MEMORY_SIZE", 100_000, 0, 10_000_000)
        capacity = integer("CAPACITY_CONNECTIONS", 1_000_000, 1, 1_000_000_000)
        lifetime = integer("MAX_CONNECTION_LIFETIME_SECONDS", 7200, 1, 10 * 365 * 24 * 3600)
        per_user = integer("MAX_CONNECTIONS_PER_USER", 0, 0, 100_000)
        gateway_attempts = integer("GATEWAY_MAX_ATTEMPTS", 3, 1, 10)
        gateway_backoff = integer("GATEWAY_BACKOFF_BASE_MS", 100, 0, 10_000)
        gateway_override = env.get(GATEWAY_ENDPOINT_VARIABLE, "").strip() or None
        if gateway_override is not None:
            parts = urlsplit(gateway_override)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(f"{GATEWAY_ENDPOINT_VARIABLE} must be an http(s) URL, got {gateway_override!r}")
                gateway_override = None
        if interval and interval >= stale:
            problems.append(
                f"ACTIVITY_WRITE_INTERVAL_SECONDS ({interval}) must be shorter than STALE_AFTER_SECONDS ({stale}), "
                "or an active connection could be swept"
            )

        # The signing key is checked where it is used (connection_manager.signing_key): only
        # paging needs it, so a missing or short one must not stop $connect or the sweep.
        token_secret = env.get("PAGINATION_TOKEN_SECRET", "").strip()
        token_key_parameter = env.get("PAGINATION_KEY_PARAMETER", "").strip()

        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        if region is None and env.get("AWS_ENDPOINT_URL_DYNAMODB"):
            # A local DynamoDB-compatible server ignores the region, but botocore insists on one.
            region = "us-east-1"

        if problems:
            raise ConfigurationError("Invalid configuration: " + "; ".join(problems))
        return cls(
            table_name=table_name,
            stale_after_seconds=stale,
            region=region,
            retention_seconds=retention,
            max_retry_attempts=retries,
            sweep_concurrency=concurrency,
            sweep_time_margin_ms=margin,
            default_page_size=page,
            activity_write_interval_seconds=interval,
            activity_memory_size=memory,
            capacity_connections=capacity,
            max_connection_lifetime_seconds=lifetime,
            max_connections_per_user=per_user,
            gateway_endpoint_override=gateway_override,
            gateway_max_attempts=gateway_attempts,
            gateway_backoff_base_ms=gateway_backoff,
            token_secret=token_secret or None,
            token_key_parameter=token_key_parameter or None,
            admin_token=env.get("ADMIN_TOKEN") or None,
            presence_event_bus=env.get("PRESENCE_EVENT_BUS", "").strip() or None,
            in_lambda=in_lambda,
        )
