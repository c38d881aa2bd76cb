"""The one validation layer: request and response shapes as msgspec Structs.

The raw Lambda handler validates action payloads with these, the Flask views validate
paths, query strings and bodies with the same ones, and the OpenAPI document is generated
from them, so the front doors cannot drift apart. msgspec is used because it validates
strictly (no silent ``"10"`` -> ``10`` for JSON events), explains failures with a path, and
imports in a few milliseconds, which matters on a Lambda cold start.
"""
from __future__ import annotations

import functools
import json
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from connection_manager.errors import ValidationError
from models.platform import RESERVED_PREFIX

#: DynamoDB's limit for a partition key value (and a GSI key value), in UTF-8 bytes.
MAX_KEY_BYTES = 2048
MAX_PAGE_SIZE = 1000
MAX_METADATA_BYTES = 2048
MAX_METADATA_DEPTH = 4
MAX_STALE_AFTER_SECONDS = 365 * 24 * 3600

#: The characters Python's ``str.isspace`` counts as whitespace, spelled out. JSON Schema's
#: ``\s`` is another set (it has U+FEFF but not U+001C-U+001F or U+0085), so the document
#: and the server share this explicit class instead of relying on either's shorthand.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: A key holds at least one character outside :data:`WHITESPACE`. JSON Schema's ``pattern``
#: searches (it is not anchored), as ``re.search`` does, so the same text serves both.
NOT_BLANK = f"[^{WHITESPACE}]"
_NOT_BLANK = re.compile(NOT_BLANK)

KeyString = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_KEY_BYTES,
        description="A DynamoDB key value: 1 to 2048 UTF-8 bytes, not only whitespace.",
        # Documented only: _check_key applies it, with a message that says "blank" rather than a regex.
        extra_json_schema={"pattern": NOT_BLANK},
    ),
]
Status = Literal["CONNECTED", "DISCONNECTED"]
Limit = Annotated[int, Meta(ge=1, le=MAX_PAGE_SIZE, description="Page size, 1 to 1000.")]
#: The shape of every token the service issues (``tokens.TokenCodec.encode``): unpadded
#: base64url of the payload, a dot, and 22 characters of base64url for the 16-byte signature.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$"
#: Longest token accepted. The longest the service can issue is 49,326 characters (a user
#: listing whose scope and last key hold 2048-byte ids of control characters, each escaped to
#: six bytes of JSON); ordinary ids make tokens of a few hundred. The bound also keeps the
#: longest request line (worst-case id in the path, plus a token one character too long)
#: under the 64 KiB a request line may take, so an over-long token is answered as a 400.
MAX_TOKEN_CHARS = 50_000
NextToken = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TOKEN_CHARS,
        pattern=TOKEN_PATTERN,
        description="Opaque token from a previous page's `nextToken`; any other value is a 400.",
    ),
]
StaleAfter = Annotated[
    int, Meta(ge=1, le=MAX_STALE_AFTER_SECONDS, description="Seconds without activity after which a connection is stale.")
]
Timestamp = Annotated[str, Meta(description="ISO-8601 UTC with a Z suffix.", examples=["2024-01-01T00:05:00Z"])]


def _check_key(name: str, value: str) -> None:
    if name == "connectionId" and value.startswith(RESERVED_PREFIX):
        # The table's own counters and history live under these keys (models.platform).
        raise ValueError(f"`connectionId` must not start with `{RESERVED_PREFIX}`: those keys are reserved")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"`{name}` is longer than DynamoDB allows ({MAX_KEY_BYTES} bytes)")
    if not _NOT_BLANK.search(value):
        raise ValueError(f"`{name}` must not be blank")


def _storable_number(value: int | float) -> bool:
    """DynamoDB refuses (ValidationException) numbers outside its range or precision."""
    number = Decimal(repr(value))
    if number.is_zero():
        return True
    significant = "".join(map(str, number.as_tuple().digits)).strip("0")
    return len(significant) <= 38 and -130 <= number.adjusted() <= 125


def metadata_size(metadata: dict[str, Any]) -> int:
    """Bytes of ``metadata`` as the limit counts them: compact JSON, non-ASCII escaped."""
    return len(json.dumps(metadata, separators=(",", ":")))


def truncate_for_json(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose JSON string (escapes included, quotes not) fits ``max_bytes``.

    What a client sends (a user agent) is cut by how :func:`metadata_size` measures it:
    ``é`` takes six bytes there and an emoji twelve, so cutting by characters is not enough.
    A prefix never splits a character, so no half surrogate pair is stored.
    """
    used = 0
    for index, char in enumerate(text[:max_bytes]):  # every character costs at least one byte
        used += len(json.dumps(char)) - 2
        if used > max_bytes:
            return text[:index]
    return text[:max_bytes]


def _check_metadata(metadata: dict[str, Any]) -> None:
    def depth(value: Any, level: int) -> None:
        if level > MAX_METADATA_DEPTH:
            raise ValueError(f"`metadata` is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("`metadata` numbers must be finite")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _storable_number(value):
            raise ValueError(
                "`metadata` numbers must have at most 38 significant digits and a magnitude "
                "between 1e-130 and 1e126, as DynamoDB stores them"
            )
        if isinstance(value, dict):
            if "" in value:
                # DynamoDB refuses an empty attribute name at any depth of a map; moto stores
                # one and then answers every later read of the row with a body botocore
                # cannot parse, so it must never reach the table.
                raise ValueError("`metadata` keys must not be empty")
            for item in value.values():
                depth(item, level + 1)
        elif isinstance(value, list):
            for item in value:
                depth(item, level + 1)

    depth(metadata, 1)
    if metadata_size(metadata) > MAX_METADATA_BYTES:
        raise ValueError(f"`metadata` is larger than {MAX_METADATA_BYTES} bytes of JSON")


class Params(Struct, forbid_unknown_fields=True, frozen=True):
    """Base of the request shapes: unknown fields are an error, not silently dropped."""


# Requests ---------------------------------------------------------------------------


class GetUserConnections(Params):
    userId: KeyString
    limit: Limit | None = None
    nextToken: NextToken | None = None
    #: DISCONNECTED lists the user's history (rows live until their TTL purges them).
    status: Status | None = None

    def __post_init__(self) -> None:
        _check_key("userId", self.userId)


class Page(Params):
    """A page of a listing: the query string of the paginated HTTP lists."""

    limit: Limit | None = None
    nextToken: NextToken | None = None


class UserPage(Page):
    """The query string of a user's listing: a page, in one status (CONNECTED by default)."""

    status: Status | None = None


MAX_USER_AGENT_FILTER = 512


class GetAllConnections(Page):
    """A page of live connections, optionally filtered (each filter narrows the others).

    ``userId`` reads that user's live rows from UserIdIndex (their history: the user's
    own listing, ``status=DISCONNECTED``).
    """

    idleMoreThan: Annotated[
        int, Meta(ge=0, le=MAX_STALE_AFTER_SECONDS, description="Only connections idle for longer than this many seconds.")
    ] | None = None
    #: Compared as stored: a value that is no IP address matches nothing (a filter, not an input).
    sourceIp: Annotated[
        str, Meta(min_length=1, max_length=45, description="Only connections whose stored source IP is exactly this.")
    ] | None = None
    userAgent: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_USER_AGENT_FILTER,
            pattern=NOT_BLANK,
            description="Only user agents containing this text (not blank).",
        ),
    ] | None = None
    userId: KeyString | None = None

    def __post_init__(self) -> None:
        if self.userAgent is not None and not _NOT_BLANK.search(self.userAgent):
            raise ValueError("`userAgent` must not be blank")
        if self.userId is not None:
            _check_key("userId", self.userId)


class HistoryQuery(Params):
    """Query string of ``GET /stats/history``."""

    hours: Annotated[int, Meta(ge=1, le=720, description="How far back, in hours (records live 30 days).")] = 48
    limit: Limit = 500


class GetConnection(Params):
    connectionId: KeyString

    def __post_init__(self) -> None:
        _check_key("connectionId", self.connectionId)


class UpdateConnectionStatus(Params):
    connectionId: KeyString
    status: Status

    def __post_init__(self) -> None:
        _check_key("connectionId", self.connectionId)


class StatusChange(Params):
    """Body of ``PATCH /connections/<connectionId>``."""

    status: Status


class CleanupStaleConnections(Params):
    staleAfterSeconds: StaleAfter | None = None
    dryRun: bool = False


class RegisterConnection(Params):
    connectionId: KeyString
    userId: KeyString
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_key("connectionId", self.connectionId)
        _check_key("userId", self.userId)
        if self.metadata is not None:
            _check_metadata(self.metadata)


class ClientConnect(RegisterConnection):
    """A WebSocket ``$connect``: a registration plus the socket's management endpoint, which only
    API Gateway's event can give (no raw action can name one)."""

    endpoint: Annotated[str, Meta(max_length=2048)] | None = None


class Heartbeat(GetConnection):
    pass


class ClientDisconnect(GetConnection):
    """A WebSocket ``$disconnect``: API Gateway's event, not a raw action anyone may send."""


class ClientMessage(GetConnection):
    """A WebSocket message on any other route: activity of that connection."""


class SeedDemo(Params):
    """The CLI's ``seed``: demo rows (live, stale past the cutoff, DISCONNECTED history)."""

    live: Annotated[int, Meta(ge=0)]
    stale: Annotated[int, Meta(ge=0)] = 0
    history: Annotated[int, Meta(ge=0)] = 0
    users: Annotated[int, Meta(ge=0)] = 0
    prefix: str = "demo"


class DisconnectUser(Params):
    userId: KeyString

    def __post_init__(self) -> None:
        _check_key("userId", self.userId)


class GetUserPresence(Params):
    userId: KeyString

    def __post_init__(self) -> None:
        _check_key("userId", self.userId)


class NoParams(Params):
    pass


# Responses (documented in OpenAPI; bodies are built from these) -----------------------


class Response(Struct):
    """A response shape the service returns as is: its body is the Struct as JSON builtins."""

    def to_body(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class ConnectionRecord(Struct, omit_defaults=True):
    connectionId: str
    userId: str
    status: Status
    createdAt: Timestamp
    lastActiveAt: Timestamp | None = None
    updatedAt: Timestamp | None = None
    disconnectedAt: Timestamp | None = None
    disconnectReason: Literal["client", "stale", "admin", "gone", "lifetime", "evicted"] | None = None
    metadata: dict[str, Any] | None = None


class ConnectionList(Response, omit_defaults=True, rename="camel"):
    """One page of a listing. The service fills ``connections`` with records already
    serialized by ``records.to_record`` (plain dicts of this shape)."""

    connections: list[ConnectionRecord]
    count: int
    next_token: str | None = None


class ConnectionEnvelope(Struct):
    connection: ConnectionRecord


NotClosed = Annotated[
    int,
    Meta(
        ge=1,
        description="Present when API Gateway could not be made to close this many of the sockets (unreachable "
        "or refusing after retries); the connections are DISCONNECTED all the same. Repeating the request retries.",
    ),
]


class StatusChangeResult(Struct, omit_defaults=True):
    connection: ConnectionRecord
    notClosedCount: NotClosed | None = None


class CleanupResult(Struct, omit_defaults=True):
    message: str
    cleanedCount: int
    lifetimeCount: Annotated[int, Meta(description="Connections older than MAX_CONNECTION_LIFETIME_SECONDS: DISCONNECTED "
                                       "with reason `lifetime` (counted in cleanedCount too).")]
    dryRun: bool
    complete: bool
    scannedCount: int
    skippedCount: int
    failedCount: int
    repairedCount: int
    goneCount: Annotated[int, Meta(description="Connections API Gateway answered 410 Gone for: DISCONNECTED with "
                                   "reason `gone` (counted in cleanedCount too).")]
    reconciledCount: Annotated[int, Meta(description="Idle-looking connections API Gateway reported active: kept "
                                         "CONNECTED with the gateway's lastActiveAt.")]
    unreconciledCount: Annotated[int, Meta(description="Connections the gateway could not be asked about "
                                           "(unreachable after retries): swept as before.")]
    staleAfterSeconds: int
    cutoff: Timestamp
    lifetimeCutoff: Annotated[
        str, Meta(description="ISO-8601 UTC with a Z suffix: connections created before this are past their lifetime.")
    ]
    durationMs: int
    activeConnections: Annotated[
        int, Meta(description="Live connections after a real sweep (absent in a dry run): counted by the snapshot pass "
                  "when this invocation finished one, else the live counters' figure.")
    ] | None = None
    snapshotComplete: Annotated[
        bool, Meta(description="Whether this invocation finished a snapshot pass (absent in a dry run); a pass "
                   "that did not fit carries on in the next invocation.")
    ] | None = None
    #: Rows past their lifetime, or open but idle at the gateway, whose socket stayed open.
    notClosedCount: NotClosed | None = None


class DisconnectResult(Struct, omit_defaults=True):
    disconnectedCount: int
    notClosedCount: NotClosed | None = None


class IdleBin(Struct, rename="camel"):
    label: str
    from_seconds: int
    count: int


class UserCount(Struct, rename="camel"):
    user_id: str
    connections: int


class SnapshotProgress(Struct, rename="camel"):
    """The snapshot pass under way: it carries on in each hourly invocation until every shard is done."""

    started_at: Timestamp
    shards: int
    shards_done: int
    rows_counted: int
    invocations: int


class Stats(Response, rename="camel"):
    """Counts for the dashboard, over the live rows only, at a cost independent of their number.

    ``activeConnections`` is kept by the writes (exact at each snapshot); ``distinctUsers``,
    ``idle`` and ``topUsers`` are as of the latest snapshot, ``asOf`` (null before the first
    sweep); ``distinctUsersExact`` is false when ``distinctUsers`` is an estimate (past
    10,000 users, about 1.6 % error). ``snapshotAgeSeconds`` says how old those figures
    are; ``snapshotPass`` how far the pass that will replace them has come (null when
    none is under way: the figures are as fresh as the last sweep).
    """

    active_connections: int
    distinct_users: int
    stale_connections: int
    stale_after_seconds: int
    table: str
    generated_at: Timestamp
    as_of: Timestamp | None = None
    distinct_users_exact: bool = True
    idle: list[IdleBin] = []
    top_users: list[UserCount] = []
    snapshot_age_seconds: int | None = None
    snapshot_pass: SnapshotProgress | None = None


class UserPresence(Response, rename="camel"):
    """Whether a user is online now: ``connections`` counts their CONNECTED rows (read from
    the user index, so the answer holds with presence events off); ``lastSeenAt`` is their
    latest activity while online, else when the stream last saw one of their connections
    open or close (null when it never did, or presence is off)."""

    user_id: str
    online: bool
    connections: int
    last_seen_at: Timestamp | None = None


class SweepRecord(Struct, rename="camel"):
    """One sweep's result, kept 30 days."""

    at: Timestamp
    active_connections: int | None
    distinct_users: int | None
    stale_found: int
    cleaned: int
    gone: int
    lifetime: int
    evicted: int
    duration_ms: int


class StatsHistory(Response, rename="camel"):
    sweeps: list[SweepRecord]
    count: int


class Health(Struct):
    status: str
    table: str


class ErrorBody(Struct):
    error: str
    message: str


P = TypeVar("P", bound=Struct)


def parse(schema: type[P], data: Any, *, strict: bool = True) -> P:
    """Validate ``data`` against ``schema`` or raise a 400 that says what was wrong.

    ``strict=False`` is for query strings and path segments, where every value arrives
    as text and ``"10"`` must mean ``10``; JSON events and bodies stay strict.
    """
    if not isinstance(data, dict):
        raise ValidationError(f"Expected a JSON object, got {_json_type(data)}")
    integers = integer_fields(schema)
    if integers:
        data = {key: _integral(value) if key in integers else value for key, value in data.items()}
    try:
        return msgspec.convert(data, type=schema, strict=strict)
    except msgspec.ValidationError as exc:
        raise ValidationError(_readable(str(exc))) from None


@functools.cache
def integer_fields(schema: type[Struct]) -> frozenset[str]:
    """Names of the fields typed ``int`` (or ``int | None``), as they appear in requests."""
    import msgspec.inspect as mi  # only on first use: the raw handler's cold start stays small

    def is_int(info: Any) -> bool:
        if isinstance(info, mi.Metadata):  # a documented type: Annotated[int, Meta(description=...)]
            return is_int(info.type)
        if isinstance(info, mi.UnionType):
            return any(is_int(member) for member in info.types)
        return isinstance(info, mi.IntType)

    info = mi.type_info(schema)
    return frozenset(f.encode_name for f in info.fields if is_int(f.type)) if isinstance(info, mi.StructType) else frozenset()


def _integral(value: Any) -> Any:
    """``2834.0`` is the integer 2834: JSON Schema's ``integer`` is a value, not a spelling.

    The OpenAPI document says ``integer``, and a JSON encoder may write a whole number as
    ``2834.0``; refusing it would refuse what the document allows. Other floats stay floats
    and are refused as before.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


#: What each documented pattern means, said in words: msgspec names the raw regex, which
#: tells a caller nothing (the whitespace class alone is 80 characters of escapes).
_PATTERN_WORDS = {
    TOKEN_PATTERN: "a token from a previous page's `nextToken`",
    NOT_BLANK: "text that is not blank",
}


def _readable(message: str) -> str:
    """msgspec says ``... - at `$.userId```; callers know their fields without the ``$.``."""
    for pattern, words in _PATTERN_WORDS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", words)
    return message.replace("`$.", "`").replace("`$`", "the request")
