"""Everything a stage needs outside Zappa, set up by one idempotent command: `setup-stage STAGE`.

Zappa creates the function, its role, its schedule and its API; it does not create the
DynamoDB table nor the pagination signing key. This command reads the stage from
``zappa_settings.json`` (following ``extends``), then:

1. creates the table with its indexes and TTL, or brings an existing one to this layout
   (the service's own ``create_table``, ``enable_ttl`` and ``migrate``);
2. creates the SSM SecureString named by the stage's ``PAGINATION_KEY_PARAMETER`` with a
   random key, once: a re-run never overwrites it (tokens in flight stay valid).

After it, ``zappa deploy STAGE`` gives a function that answers every event.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from connection_manager.config import Settings
from connection_manager.errors import ValidationError
from connection_manager.signing_key import KEY_PARAMETER_VARIABLE


def stage_config(project: Path, stage: str) -> dict[str, Any]:
    """The stage's settings with the ones it ``extends`` underneath, as Zappa merges them."""
    path = project / "zappa_settings.json"
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read {path.name}: {exc}") from None
    if stage not in stages:
        raise ValidationError(f"no stage '{stage}' in {path.name} (stages: {', '.join(sorted(stages))})")
    config = dict(stages[stage])
    base = config.get("extends")
    if base:
        merged = stage_config(project, base)
        merged.update(config)
        config = merged
    return config


def setup_stage(stage: str, project: Path, *, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Create what ``stage`` needs outside Zappa (idempotent); what was created and what was there."""
    config = stage_config(project, stage)
    variables = {str(k): str(v) for k, v in (config.get("aws_environment_variables") or {}).items()}
    region = config.get("aws_region") or None
    table = variables.get("CONNECTIONS_TABLE_NAME")
    if not table:
        raise ValidationError(f"stage '{stage}' sets no CONNECTIONS_TABLE_NAME in aws_environment_variables")
    parameter = variables.get(KEY_PARAMETER_VARIABLE)
    if not parameter:
        raise ValidationError(f"stage '{stage}' sets no {KEY_PARAMETER_VARIABLE} in aws_environment_variables")

    env = dict(os.environ if environ is None else environ)
    settings = replace(Settings.from_env({**env, **variables}), region=region)
    return {"stage": stage, "region": region, "table": _table(settings), "keyParameter": _key_parameter(parameter, region)}


def _table(settings: Settings) -> dict[str, Any]:
    from connection_manager.service import ConnectionService

    service = ConnectionService(settings)
    created = service.create_table()
    ttl = service.enable_ttl()
    migrated = service.migrate() if not created else None
    return {"name": settings.table_name, "created": created, "ttl": ttl,
            "createdIndexes": migrated["createdIndexes"] if migrated else []}


def _key_parameter(name: str, region: str | None) -> dict[str, Any]:
    """A random SecureString under the account's AWS-managed key, created once, never overwritten."""
    import boto3

    ssm = boto3.client("ssm", region_name=region)
    try:
        ssm.put_parameter(
            Name=name,
            Description="Connection Manager: signs pagination tokens (one key per line, newest first)",
            Value=secrets.token_urlsafe(32),
            Type="SecureString",
            Overwrite=False,
        )
    except ssm.exceptions.ParameterAlreadyExists:
        return {"name": name, "created": False}
    return {"name": name, "created": True}
