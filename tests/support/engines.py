"""The DynamoDB engines the wire-level tests run on: moto_server and Amazon DynamoDB Local.

moto is fast and can be reset in one call; DynamoDB Local is AWS's own engine, stricter in
validation and atomic in conditional writes. A test that takes the ``engine`` fixture runs
once on each, with ``[moto]`` or ``[dynamodb-local]`` in its id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MOTO = "moto"
DYNAMODB_LOCAL = "dynamodb-local"
ENGINES: tuple[str, ...] = (MOTO, DYNAMODB_LOCAL)


class DynamoServer(Protocol):
    """What both server runners offer: where they listen, and a wipe of every table."""

    @property
    def url(self) -> str: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class Engine:
    """One running, empty DynamoDB-compatible server."""

    name: str
    server: DynamoServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def atomic_conditional_writes(self) -> bool:
        """Whether the engine checks a condition and writes in one step, as DynamoDB does.

        moto checks and applies in separate steps without a lock, so two concurrent
        writes to one item can both pass the same condition; race tests serialize
        requests at the proxy to get DynamoDB's guarantee back on moto.
        """
        return self.name != MOTO
