"""The ``connection-manager`` console script.

Every command goes through the same layers as the Lambda function (``invoke`` literally
runs ``lambda_handler``), so what works here works deployed. Every state change goes
through the dispatch table as ``cli:<user>``, so it writes the same audit line (on stderr)
as a change made through the API.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any, Sequence

from connection_manager.errors import ConnectionManagerError


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _service() -> Any:
    from connection_manager.wiring import get_service

    return get_service()


def _principal() -> str:
    """The operator as the audit log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container with an unknown uid)
        return "cli:unknown"


def _run(name: str, payload: dict[str, Any], **invocation: Any) -> dict[str, Any]:
    """Run one operation of the dispatch table (a raw action or a CLI-only one) as the operator."""
    from connection_manager.operations import OPERATIONS, Invocation, run_action, run_internal

    run = run_action if name in OPERATIONS else run_internal
    return run(_service(), name, payload, invocation=Invocation(principal=_principal(), **invocation))[1]


def cmd_create_table(args: argparse.Namespace) -> int:
    body = _run("create_table", {})
    table, ttl = body["table"], body["ttl"]
    print(f"table '{table}' {'created' if body['created'] else 'already exists'}")
    if ttl:
        print("TTL enabled on 'expiresAt': DISCONNECTED rows expire after the retention period")
    else:
        print("warning: this DynamoDB server does not support TTL; DISCONNECTED rows will not expire", file=sys.stderr)
    return 0


def cmd_setup_stage(args: argparse.Namespace) -> int:
    from pathlib import Path

    from connection_manager.stage import setup_stage

    body = setup_stage(args.stage, Path.cwd())
    table, key = body["table"], body["keyParameter"]
    print(f"table '{table['name']}' {'created' if table['created'] else 'already exists'}"
          + (f", indexes added: {', '.join(table['createdIndexes'])}" if table["createdIndexes"] else ""))
    print("TTL enabled on 'expiresAt'" if table["ttl"] else "warning: TTL could not be enabled")
    print(f"pagination key parameter '{key['name']}' {'created' if key['created'] else 'already exists (kept)'}")
    print(f"next: zappa deploy {args.stage}")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    from connection_manager.handler import lambda_handler

    try:
        event = json.loads(args.event)
    except json.JSONDecodeError as exc:
        _print({"statusCode": 400, "body": {"error": "ValidationError", "message": f"The event is not valid JSON: {exc}"}})
        return 2
    response = lambda_handler(event, None, invoker=_principal())
    _print(response)
    status = response.get("statusCode", 200) if isinstance(response, dict) else 200
    return 0 if status < 400 else 1


def cmd_cleanup(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"dryRun": args.dry_run}
    if args.stale_after is not None:
        payload["staleAfterSeconds"] = args.stale_after
    _print(_run("cleanup_stale_connections", payload))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    payload = {"live": args.count, "stale": args.stale, "history": args.history, "users": args.users, "prefix": args.prefix}
    with tqdm(total=args.count + args.stale + args.history, unit="row", desc="seeding", disable=args.quiet) as bar:
        body = _run("seed", payload, progress=bar.update)
    print(f"seeded {body['seeded']} rows into '{_service().settings.table_name}' "
          f"({body['live']} live, {body['stale']} stale, {body['history']} disconnected)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from connection_manager.server import serve

    return serve(host=args.host, port=args.port, embedded=args.embedded)


def cmd_local_dynamodb(args: argparse.Namespace) -> int:
    from connection_manager.server import local_dynamodb

    return local_dynamodb(port=args.port)


def cmd_reindex(args: argparse.Namespace) -> int:
    body = _run("reindex", {})
    _print(body)
    return 0 if not body["failed"] else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    body = _run("migrate", {})
    _print(body)
    for name in body["differingIndexes"]:
        print(f"warning: {name} exists with other keys or projection; see docs/migrations.md, 'By hand'",
              file=sys.stderr)
    return 0 if not body["failed"] else 1


def cmd_package(args: argparse.Namespace) -> int:
    from pathlib import Path

    from connection_manager.lambda_package import build

    output = Path(args.output or f"connection-manager-{args.stage}.zip").resolve()
    problems = build(args.stage, output, project=Path.cwd())
    if problems:
        print("error: refusing the Lambda package: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"checked {output}: it holds the function's code and dependencies and no dev tools")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connection-manager",
        description="Query, correct and sweep WebSocket connection rows in DynamoDB.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("create-table", help="create the table and its indexes, enable TTL").set_defaults(
        func=cmd_create_table
    )

    setup = commands.add_parser(
        "setup-stage", help="create what a stage needs outside Zappa (table, indexes, TTL, pagination key); idempotent"
    )
    setup.add_argument("stage", help="a stage of zappa_settings.json, e.g. dev or production")
    setup.set_defaults(func=cmd_setup_stage)
    invoke = commands.add_parser("invoke", help="run one event through lambda_handler and print the response")
    invoke.add_argument("event", help='the event as JSON, e.g. \'{"action": "get_all_connections"}\'')
    invoke.set_defaults(func=cmd_invoke)

    cleanup = commands.add_parser("cleanup", help="mark stale CONNECTED connections DISCONNECTED")
    cleanup.add_argument("--dry-run", action="store_true", help="count what would be cleaned, change nothing")
    cleanup.add_argument("--stale-after", type=int, metavar="SECONDS", help="override STALE_AFTER_SECONDS")
    cleanup.set_defaults(func=cmd_cleanup)

    commands.add_parser(
        "reindex", help="one-time migration: put CONNECTED rows written by other tools into the active index"
    ).set_defaults(func=cmd_reindex)

    commands.add_parser(
        "migrate", help="add the indexes an existing table lacks (UpdateTable), wait for them, then reindex"
    ).set_defaults(func=cmd_migrate)

    seed = commands.add_parser("seed", help="write demo connections (with a progress bar)")
    seed.add_argument("count", type=int, help="live (CONNECTED, recently active) connections")
    seed.add_argument("--stale", type=int, default=0, help="CONNECTED connections idle past the stale cutoff")
    seed.add_argument("--history", type=int, default=0, help="DISCONNECTED rows of history")
    seed.add_argument("--users", type=int, default=0, help="distinct users (default: a third of the rows)")
    seed.add_argument("--prefix", default="demo", help="connection id prefix")
    seed.add_argument("--quiet", action="store_true", help="no progress bar")
    seed.set_defaults(func=cmd_seed)

    serve = commands.add_parser("serve", help="run the admin app (HTTP API and dashboard)")
    serve.add_argument("--embedded", action="store_true", help="in-process DynamoDB with the table and demo data")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.set_defaults(func=cmd_serve)

    local = commands.add_parser(
        "local-dynamodb", help="run an in-memory DynamoDB on loopback and print the exports that point the CLI at it"
    )
    local.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    local.set_defaults(func=cmd_local_dynamodb)

    package = commands.add_parser(
        "package",
        help="build the stage's Lambda zip with Zappa from this virtualenv (activated or not) and check its contents",
    )
    package.add_argument("stage", help="a stage of zappa_settings.json, e.g. dev or production")
    package.add_argument("-o", "--output", metavar="OUT", help="the zip to write (default connection-manager-STAGE.zip)")
    package.set_defaults(func=cmd_package)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("count", "stale", "history", "users"):
        if getattr(args, name, 0) is not None and getattr(args, name, 0) < 0:
            print(f"error: {name} must not be negative", file=sys.stderr)
            return 2
    from connection_manager.observability import setup_logging

    setup_logging()  # audit lines (and warnings) on stderr; stdout stays the command's output
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not as a traceback at exit
        return code
    except ConnectionManagerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Stop quietly, as other command-line tools do; stdout goes nowhere from here on, so
        # the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
