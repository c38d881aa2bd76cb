"""The key that signs pagination tokens, found only when a token is issued or checked.

Only listings that page need it, so a missing or unreadable key fails those with a 503
naming what to fix, and never ``$connect``, messages, the sweep or ``/health``. Where it
comes from, first match wins:

1. ``PAGINATION_TOKEN_SECRET``, set explicitly (16 characters or more);
2. the SSM parameter named by ``PAGINATION_KEY_PARAMETER`` (a SecureString that
   ``connection-manager setup-stage`` creates once per stage), read with Powertools'
   parameters utility and cached per container for ``PARAMETER_MAX_AGE_SECONDS``;
3. outside Lambda, a random key per process (one local server issues and accepts its own);
4. in Lambda with neither: 503, since a per-container key would break every token served
   by another container, and a derived one could be forged.

Rotation: the parameter may hold several keys, one per line, newest first. Tokens are
signed with the first and accepted with any, so putting a new key in front of the old
one keeps tokens in flight working until the old line is dropped.
"""
from __future__ import annotations

import logging
from typing import Callable

from connection_manager.config import MIN_TOKEN_SECRET_CHARS, Settings, process_token_secret
from connection_manager.errors import UnavailableError

log = logging.getLogger(__name__)

#: How long a container keeps the parameter's value: a rotation reaches every container
#: within this time, and a busy container reads SSM at most once per period.
PARAMETER_MAX_AGE_SECONDS = 300

KEY_PARAMETER_VARIABLE = "PAGINATION_KEY_PARAMETER"

#: Reads a SecureString's decrypted value (replaced in tests).
ParameterReader = Callable[[str], str]


def read_parameter(name: str) -> str:
    """Powertools' cached ``GetParameter`` with decryption; imported on first use only."""
    from aws_lambda_powertools.utilities import parameters

    return parameters.get_parameter(name, decrypt=True, max_age=PARAMETER_MAX_AGE_SECONDS)


class SigningKeys:
    """Resolves the signing keys on demand; every failure names the setting to fix."""

    def __init__(self, settings: Settings, reader: ParameterReader = read_parameter) -> None:
        self._settings = settings
        self._reader = reader

    def keys(self) -> list[str]:
        """The keys, newest first: the first signs, any of them verifies."""
        problem = describe_problem(self._settings)
        if problem:
            raise unavailable(problem)
        if self._settings.token_secret is not None:
            return [self._settings.token_secret]
        if self._settings.token_key_parameter:
            return self._from_parameter(self._settings.token_key_parameter)
        return [process_token_secret()]

    def _from_parameter(self, name: str) -> list[str]:
        try:
            value = self._reader(name)
        except Exception as exc:  # Powertools wraps every SSM failure in GetParameterError
            log.warning("pagination key parameter %s could not be read: %s", name, exc)
            raise unavailable(
                f"The pagination key parameter {name} could not be read ({_reason(exc)}): the function's role needs "
                f"ssm:GetParameter on that parameter, and the parameter must exist (`connection-manager setup-stage STAGE`)"
            ) from None
        keys = [line.strip() for line in str(value).splitlines() if line.strip()]
        if not keys or any(len(key) < MIN_TOKEN_SECRET_CHARS for key in keys):
            raise unavailable(
                f"The pagination key parameter {name} must hold one key per line, each at least "
                f"{MIN_TOKEN_SECRET_CHARS} characters long"
            )
        return keys


def unavailable(message: str) -> UnavailableError:
    return UnavailableError(f"Paging is unavailable: {message}")


def describe_problem(settings: Settings) -> str | None:
    """What in the settings stops tokens (no I/O: the parameter itself is read by :meth:`SigningKeys.keys`).

    The one check behind both the cold-start log line and each 503.
    """
    explicit = settings.token_secret
    if explicit is not None and len(explicit) < MIN_TOKEN_SECRET_CHARS:
        return f"PAGINATION_TOKEN_SECRET must be at least {MIN_TOKEN_SECRET_CHARS} characters long"
    if explicit is None and not settings.token_key_parameter and settings.in_lambda:
        return (
            f"{KEY_PARAMETER_VARIABLE} is not set: run `connection-manager setup-stage STAGE` and deploy the stage's "
            "settings (or set PAGINATION_TOKEN_SECRET)"
        )
    return None


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
