"""DynamoDB failures turned into the project's errors, in one place.

PynamoDB carries the DynamoDB error code on the botocore error it wraps; we branch on that
code, never on message text. Throttling and server errors have already been retried with
jittered exponential backoff by botocore's standard retry mode (configured in
``models.configure``) by the time they reach this module.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

from botocore.exceptions import (
    CredentialRetrievalError,
    NoAuthTokenError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)
from pynamodb.connection.base import BOTOCORE_EXCEPTIONS
from pynamodb.constants import ALL_NEW, ALL_OLD, ATTRIBUTES, UPDATE_ITEM
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError
from pynamodb.models import Model

from connection_manager.errors import InternalError, UnavailableError

log = logging.getLogger(__name__)

CONDITION_FAILED = "ConditionalCheckFailedException"
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)

#: botocore's "no usable credentials" failures. They happen before any request is sent, so
#: they carry no DynamoDB error code and would otherwise read as an unreachable endpoint.
CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    ProfileNotFound,
    NoAuthTokenError,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)


def error_code(exc: PynamoDBException) -> str | None:
    """The DynamoDB error code, or None when no answer came back at all.

    ``cause_response_code`` itself raises ``AttributeError`` for a dropped connection:
    botocore's connection errors carry ``response=None``.
    """
    response = getattr(exc.cause, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("Error", {}).get("Code")


def is_condition_failure(exc: PynamoDBException) -> bool:
    return error_code(exc) == CONDITION_FAILED


M = TypeVar("M", bound=Model)


def update_or_current(
    row: M, actions: list[Any], condition: Any, return_values: str | None = ALL_NEW
) -> tuple[bool, dict[str, Any] | None]:
    """One conditional UpdateItem that, when its condition fails, says what the item holds.

    Returns ``(True, None)`` when applied (``row`` then holds the updated item, as
    ``Model.update`` leaves it), and ``(False, item)`` when the condition failed: ``item``
    is the stored item in DynamoDB's JSON (``ReturnValuesOnConditionCheckFailure=ALL_OLD``,
    no extra read, no extra cost), or None when there is no such item.

    This is how a write whose answer was lost tells "my own earlier attempt already
    applied it" (botocore retried it, and the retry failed the condition the first attempt
    made false) from "someone else changed it". PynamoDB 6.1's ``Model.update`` cannot ask
    for the item (pynamodb/PynamoDB#1219), so the request is built by PynamoDB as
    ``update`` builds it and sent through the same connection, adding only that parameter.
    Other failures raise ``UpdateError`` exactly as ``Model.update`` does.
    ``return_values=None`` asks for nothing back on success (the message path: a smaller
    answer, and ``row`` keeps only its key).
    """
    table = type(row)._get_connection()
    hash_key, range_key = row._get_hash_range_key_serialized_values()
    request = table.get_operation_kwargs(
        hash_key,
        range_key=range_key,
        actions=actions,
        condition=condition,
        return_values=return_values,
        return_values_on_condition_failure=ALL_OLD,
    )
    try:
        data = table.connection.dispatch(UPDATE_ITEM, request)
    except BOTOCORE_EXCEPTIONS as exc:
        error = UpdateError(f"Failed to update item: {exc}", exc)
        if not is_condition_failure(error):
            raise error from exc
        return False, _item_of_condition_failure(exc)
    if ATTRIBUTES in data:
        row.deserialize(data[ATTRIBUTES])
    return True, None


def _item_of_condition_failure(exc: BaseException) -> dict[str, Any] | None:
    """The ``Item`` of a ConditionalCheckFailedException (botocore parses it as a modeled field).

    PynamoDB re-raises botocore's ClientError as its own error with only the ``Error`` part,
    chained to the original (``raise ... from``), so both are looked at.
    """
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Item"), dict):
            return response["Item"]
    return None


@contextmanager
def dynamo_errors(operation: str) -> Iterator[None]:
    """Map a PynamoDB failure of ``operation`` onto a 503 (transient) or 500 (our bug).

    A failed condition is re-raised untouched: it is an answer, not a failure.
    """
    try:
        yield
    except DoesNotExist:
        raise  # the caller turns a missing row into the right 404 or 409
    except PynamoDBException as exc:
        code = error_code(exc)
        if code == CONDITION_FAILED:
            raise  # an expected outcome of a conditional write; the caller decides what it means
        if code in RETRYABLE_CODES:
            raise UnavailableError(
                f"DynamoDB is throttling or failing ({code}) and {operation} did not succeed after retries; "
                "try again shortly"
            ) from None
        if code == "ResourceNotFoundException":
            raise UnavailableError(
                f"DynamoDB table or index not found during {operation}: for a new table run "
                "`connection-manager create-table`; for a table made by an earlier version, `connection-manager migrate`"
            ) from None
        if code in ("UnrecognizedClientException", "AccessDeniedException", "ExpiredTokenException"):
            raise UnavailableError(f"DynamoDB refused the credentials during {operation} ({code})") from None
        if code is None and isinstance(exc.cause, CREDENTIAL_ERRORS):
            # Botocore's own message is not repeated: some providers put their output in it.
            raise UnavailableError(
                f"No usable AWS credentials for DynamoDB during {operation} ({type(exc.cause).__name__}): set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE to a configured profile; for a local "
                "DynamoDB, `connection-manager local-dynamodb` prints the settings to use"
            ) from None
        if code is None:
            # No DynamoDB answer at all: the endpoint was unreachable or the connection dropped.
            raise UnavailableError(f"DynamoDB could not be reached during {operation}; try again shortly") from None
        log.exception("unexpected DynamoDB error during %s: %s", operation, code)
        raise InternalError(f"Unexpected DynamoDB error during {operation} ({code})") from None
