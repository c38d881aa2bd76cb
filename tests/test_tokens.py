"""Pagination tokens: what the service issues decodes back; nothing else gets through.

A token that decodes wrongly would hand an arbitrary ``ExclusiveStartKey`` to DynamoDB
(an error 500, or a page of another listing), so every way of forging one must be a 400.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from connection_manager.errors import ValidationError
from connection_manager.tokens import Cursor, TokenCodec

KEYS = frozenset({"connectionId", "activeShard", "lastActiveAt"})
KEY = {"connectionId": {"S": "c1"}, "activeShard": {"N": "2"}, "lastActiveAt": {"S": "2024-01-01T12:00:00Z"}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(secret: str, payload: dict[str, Any]) -> str:
    """A token built by hand with the right secret: tests the checks after the signature."""
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).digest()[:16]
    return b64(raw) + "." + b64(signature)


def decode(codec: TokenCodec, token: str, scope: str = "all") -> Cursor:
    return codec.decode(token, scope, shards=4, key_names=KEYS)


def test_round_trip__key_and_shard():
    codec = TokenCodec("s3cret")
    token = codec.encode("all", Cursor(2, KEY))

    assert decode(codec, token) == Cursor(2, KEY)


def test_round_trip__shard_boundary_without_key():
    codec = TokenCodec("s3cret")
    assert decode(codec, codec.encode("all", Cursor(3, None))) == Cursor(3, None)


def test_token_is_url_safe_text():
    token = TokenCodec("s3cret").encode("all", Cursor(1, KEY))
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_other_secret__rejected():
    token = TokenCodec("one").encode("all", Cursor(0, KEY))
    with pytest.raises(ValidationError):
        decode(TokenCodec("two"), token)


def test_other_scope__rejected():
    codec = TokenCodec("s3cret")
    token = codec.encode("user:alice", Cursor(0, None))
    with pytest.raises(ValidationError):
        decode(codec, token, scope="user:bob")
    with pytest.raises(ValidationError):
        decode(codec, token, scope="all")


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "!!!.???", "abc.", ".abc", "x" * 9000 + ".abc", "eyJ2IjoxfQ.AAAAAAAAAAAAAAAAAAAAAA"],
)
def test_garbage__rejected(token):
    with pytest.raises(ValidationError) as raised:
        decode(TokenCodec("s3cret"), token)
    assert raised.value.status == 400
    assert "nextToken" in raised.value.message


def test_tampered_payload__rejected():
    codec = TokenCodec("s3cret")
    body, signature = codec.encode("all", Cursor(0, KEY)).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["shard"] = 1
    forged = b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()) + "." + signature

    with pytest.raises(ValidationError):
        decode(codec, forged)


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 2, "scope": "all", "shard": 0, "key": None},  # a future format
        {"v": 1, "scope": "all", "shard": 4, "key": None},  # no such shard
        {"v": 1, "scope": "all", "shard": -1, "key": None},
        {"v": 1, "scope": "all", "shard": True, "key": None},  # bool is not a shard
        {"v": 1, "scope": "all", "shard": "0", "key": None},
        {"v": 1, "scope": "all", "shard": 0, "key": {"connectionId": {"S": "c1"}}},  # missing key names
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "userId": {"S": "u"}}},  # extra key name
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "activeShard": {"BOOL": True}}},  # wrong type
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "connectionId": {"S": ""}}},  # empty value
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "connectionId": {"S": "x" * 2049}}},  # too long
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "connectionId": {"S": "c", "N": "1"}}},
        {"v": 1, "scope": "all", "shard": 0, "key": {**KEY, "connectionId": "c1"}},
        {"v": 1, "scope": "all", "shard": 0, "key": ["c1"]},
    ],
)
def test_correctly_signed_but_invalid_content__rejected(payload):
    with pytest.raises(ValidationError):
        decode(TokenCodec("s3cret"), signed("s3cret", payload))


def test_signed_non_object_payload__rejected():
    raw = b"[1, 2, 3]"
    signature = hmac.new(b"s3cret", raw, hashlib.sha256).digest()[:16]
    with pytest.raises(ValidationError):
        decode(TokenCodec("s3cret"), b64(raw) + "." + b64(signature))


def test_signed_invalid_utf8_payload__rejected():
    raw = b"\xff\xfe\xfa"
    signature = hmac.new(b"s3cret", raw, hashlib.sha256).digest()[:16]
    with pytest.raises(ValidationError):
        decode(TokenCodec("s3cret"), b64(raw) + "." + b64(signature))
