"""Opaque, signed pagination tokens.

A ``nextToken`` carries DynamoDB's ``LastEvaluatedKey`` (and the shard a listing had
reached) back to the caller. It is signed with HMAC-SHA256 and bound to the listing it
came from, so a forged, corrupted or borrowed token is a 400 instead of an arbitrary
``ExclusiveStartKey`` handed to DynamoDB.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Sequence

import msgspec

from connection_manager.errors import ValidationError

_VERSION = 1
_SIGNATURE_BYTES = 16


class Cursor(msgspec.Struct, frozen=True):
    """Where a listing stopped: the shard (0 for single-partition listings) and the key."""

    shard: int
    key: dict[str, dict[str, Any]] | None


class TokenCodec:
    """Signs with the first secret and accepts any of them, so a rotated key keeps the
    tokens it signed valid for as long as it stays in the list."""

    def __init__(self, secret: str | Sequence[str]) -> None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        if not secrets:
            raise ValueError("a token codec needs at least one secret")
        self._secrets = [item.encode("utf-8") for item in secrets]

    def _sign(self, payload: bytes, secret: bytes | None = None) -> bytes:
        key = self._secrets[0] if secret is None else secret
        return hmac.new(key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def _signed_by_any(self, payload: bytes, signature: bytes) -> bool:
        return any(hmac.compare_digest(self._sign(payload, secret), signature) for secret in self._secrets)

    def encode(self, scope: str, cursor: Cursor) -> str:
        # Raw UTF-8 rather than \u escapes: a key may be 2048 bytes of any characters.
        payload = json.dumps(
            {"v": _VERSION, "scope": scope, "shard": cursor.shard, "key": cursor.key},
            separators=(",", ":"),
            sort_keys=True,
            ensure_ascii=False,
        ).encode("utf-8")
        return _b64(payload) + "." + _b64(self._sign(payload))

    def decode(self, token: str, scope: str, *, shards: int, key_names: frozenset[str]) -> Cursor:
        """Return the cursor of a token this service issued for ``scope``, or raise a 400."""
        invalid = ValidationError("`nextToken` is not a token issued by this service for this listing")
        try:
            body, signature = token.split(".")
            payload = _unb64(body)
            if not self._signed_by_any(payload, _unb64(signature)):
                raise invalid
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
        if not isinstance(data, dict) or data.get("v") != _VERSION or data.get("scope") != scope:
            raise invalid
        shard, key = data.get("shard"), data.get("key")
        if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < shards:
            raise invalid
        if key is not None and not _is_key(key, key_names):
            raise invalid
        return Cursor(shard=shard, key=key)


def _is_key(key: Any, key_names: frozenset[str]) -> bool:
    """A DynamoDB key: exactly the expected attribute names, each one typed S or N value."""
    if not isinstance(key, dict) or set(key) != key_names:
        return False
    for value in key.values():
        if not isinstance(value, dict) or len(value) != 1:
            return False
        ((kind, raw),) = value.items()
        if kind not in ("S", "N") or not isinstance(raw, str) or not raw or len(raw) > 2048:
            return False
    return True


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: Longest token part accepted; comfortably above the longest one :func:`encode` can make
#: (a user listing's scope and key hold three 2048-byte strings; control characters are
#: still escaped to six bytes each: about 37 KB of JSON, 50 KB of base64).
MAX_PART_CHARS = 65_536


def _unb64(text: str) -> bytes:
    if not text or len(text) > MAX_PART_CHARS:
        raise ValueError("bad token part")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
