"""The pagination signing key: only paging needs it, and the stage provisions it in SSM.

A deployed function that has no key yet (or cannot read it) answers every event but the
listings that page; those answer 503 naming the parameter and the permission.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import boto3
import pytest

from connection_manager.handler import lambda_handler
from connection_manager.service import ConnectionService
from connection_manager.signing_key import SigningKeys
from connection_manager.tokens import TokenCodec, _b64
from tests.support.events import FakeLambdaContext, load_event, websocket_event
from tests.support.fixtures import *  # noqa: F401,F403

PARAMETER = "/connection-manager/test/pagination-key"
OLD_KEY = "an-old-pagination-key-0123456789"
NEW_KEY = "a-new-pagination-key-9876543210"


@pytest.fixture
def deployed(service: ConnectionService, handler_service: ConnectionService, monkeypatch: pytest.MonkeyPatch) -> ConnectionService:
    """The service as a deployed function has it: in Lambda, no explicit secret."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "connection-manager-test")
    service.settings = replace(service.settings, in_lambda=True, token_secret=None, token_key_parameter=None)
    service.signing_keys = SigningKeys(service.settings)
    return service


def _with_parameter(service: ConnectionService, value: str | None) -> None:
    """Name the stage's parameter (creating it with ``value`` unless None), read fresh each time."""
    if value is not None:
        boto3.client("ssm", region_name="us-east-1").put_parameter(
            Name=PARAMETER, Value=value, Type="SecureString", Overwrite=True
        )
    service.settings = replace(service.settings, token_key_parameter=PARAMETER)
    service.signing_keys = SigningKeys(service.settings, reader=_uncached_reader)


def _uncached_reader(name: str) -> str:
    return boto3.client("ssm", region_name="us-east-1").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def _listing(limit: int = 1, token: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"action": "get_all_connections", "limit": limit}
    if token:
        event["nextToken"] = token
    return lambda_handler(event, FakeLambdaContext())


def test_no_key__every_event_but_paging_answers(deployed: ConnectionService, make_connection: Any) -> None:
    # Given a fresh deploy: neither PAGINATION_TOKEN_SECRET nor the key parameter
    make_connection("old", idle=timedelta(hours=3))

    # When each kind of event arrives, they all answer as usual
    assert lambda_handler(websocket_event("websocket_connect", "c1", user_id="u1"), FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler(websocket_event("websocket_message", "c1"), FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler(load_event("scheduled_event"), FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler({"action": "get_connection", "connectionId": "c1"}, FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler({"action": "get_user_connections", "userId": "u1"}, FakeLambdaContext())["statusCode"] == 200
    assert _listing(limit=100)["statusCode"] == 200  # one page: no token to sign
    assert lambda_handler(websocket_event("websocket_disconnect", "c1"), FakeLambdaContext())["statusCode"] == 200


def test_no_key__a_listing_that_pages__503_naming_the_setting(deployed: ConnectionService, make_connection: Any) -> None:
    make_connection("a")
    make_connection("b")

    answer = _listing(limit=1)

    assert answer["statusCode"] == 503
    assert "PAGINATION_KEY_PARAMETER" in answer["body"]["message"]
    assert "setup-stage" in answer["body"]["message"]


def test_missing_parameter__503_naming_the_parameter_and_the_permission(deployed: ConnectionService, make_connection: Any) -> None:
    # Given the stage names a parameter that was never created (or that the role cannot read)
    make_connection("a")
    make_connection("b")
    _with_parameter(deployed, None)

    answer = _listing(limit=1)

    assert answer["statusCode"] == 503
    assert PARAMETER in answer["body"]["message"]
    assert "ssm:GetParameter" in answer["body"]["message"]
    # and everything that takes no token still works
    assert lambda_handler({"action": "get_connection", "connectionId": "a"}, FakeLambdaContext())["statusCode"] == 200
    assert lambda_handler(load_event("scheduled_event"), FakeLambdaContext())["statusCode"] == 200


def test_parameter__a_token_issued_by_one_container_is_continued_by_another(
    deployed: ConnectionService, make_connection: Any
) -> None:
    for name in ("a", "b", "c"):
        make_connection(name)
    _with_parameter(deployed, NEW_KEY)
    first = _listing(limit=2)
    assert first["statusCode"] == 200 and first["body"]["nextToken"]

    # When another container (its own key reader, nothing shared) continues the listing
    deployed.signing_keys = SigningKeys(deployed.settings, reader=_uncached_reader)
    second = _listing(limit=2, token=first["body"]["nextToken"])

    assert second["statusCode"] == 200
    ids = [row["connectionId"] for row in first["body"]["connections"] + second["body"]["connections"]]
    assert sorted(ids) == ["a", "b", "c"]


def test_rotation__tokens_signed_with_the_previous_key_keep_working(deployed: ConnectionService, make_connection: Any) -> None:
    for name in ("a", "b", "c"):
        make_connection(name)
    _with_parameter(deployed, OLD_KEY)
    token = _listing(limit=1)["body"]["nextToken"]

    # When the key is rotated: the new one in front, the old one kept for tokens in flight
    _with_parameter(deployed, f"{NEW_KEY}\n{OLD_KEY}")

    assert _listing(limit=1, token=token)["statusCode"] == 200
    fresh = _listing(limit=1)["body"]["nextToken"]
    # and once the old line is dropped, its tokens end (clients restart their listing)
    _with_parameter(deployed, NEW_KEY)
    assert _listing(limit=1, token=token)["statusCode"] == 400
    assert _listing(limit=1, token=fresh)["statusCode"] == 200


def test_parameter__tampered_token__400(deployed: ConnectionService, make_connection: Any) -> None:
    make_connection("a")
    make_connection("b")
    _with_parameter(deployed, NEW_KEY)
    token = _listing(limit=1)["body"]["nextToken"]
    body, signature = token.split(".")
    # Given the same cursor signed with a guessed key, and the real signature altered
    guessed = TokenCodec(f"guessed-key-0123456789\n{deployed.settings.table_name}")
    forged = [body + "." + _b64(guessed._sign(_unpadded(body))), body + "." + ("A" if signature[0] != "A" else "B") + signature[1:]]

    for token in forged:
        answer = _listing(limit=1, token=token)
        assert answer["statusCode"] == 400, token
        assert "nextToken" in answer["body"]["message"]


def _unpadded(body: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_parameter__short_key__503_naming_the_rule(deployed: ConnectionService, make_connection: Any) -> None:
    make_connection("a")
    make_connection("b")
    _with_parameter(deployed, "short")

    answer = _listing(limit=1)

    assert answer["statusCode"] == 503
    assert "at least 16 characters" in answer["body"]["message"]


def test_explicit_secret_wins_over_the_parameter(deployed: ConnectionService, make_connection: Any) -> None:
    make_connection("a")
    make_connection("b")
    _with_parameter(deployed, None)  # named but missing: would be a 503
    deployed.settings = replace(deployed.settings, token_secret=NEW_KEY)
    deployed.signing_keys = SigningKeys(deployed.settings, reader=_uncached_reader)

    assert _listing(limit=1)["statusCode"] == 200
