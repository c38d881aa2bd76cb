"""Run events through a built Lambda package the way the Python 3.11 runtime would.

``zappa package`` bundles the project with its dependencies, minus what the Lambda
runtime already provides (boto3 and friends). A package that works in the development
virtualenv can still fail in Lambda: a dependency excluded by mistake, a module that only
imported because some dev tool happened to be installed. This script imports the package's
Lambda Handler in an interpreter that sees nothing but the unzipped package, the standard
library and the runtime's own libraries, and calls it with the given events.

Run it with ``-I -S`` so neither ``PYTHONPATH`` nor site-packages leak in::

    python -I -S deploy/run_package.py --package connection-manager-production.zip \
        --runtime-site .venv/lib/python3.11/site-packages \
        --events events.json --output results.json

``--events`` is a JSON array of events. ``--output`` gets ``{"results": [...],
"flask_loaded": [...], "origins": {...}}``: each event's return value (or the error it
raised), whether Flask had been imported after each event, and the file each key module
was imported from. The environment is passed through unchanged: set the function's
variables (``CONNECTIONS_TABLE_NAME``, ``AWS_ENDPOINT_URL_DYNAMODB`` for a local
DynamoDB, ``AWS_LAMBDA_FUNCTION_NAME``) before running it. Standard library only.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
import zipfile
from pathlib import Path
from typing import Any

#: What the Lambda Python runtime ships outside the package (boto3 and its dependencies).
RUNTIME_LIBRARIES = ("boto3", "botocore", "jmespath", "dateutil", "s3transfer", "urllib3", "six.py")

#: Modules whose origin the caller may want to check.
REPORTED_MODULES = ("flask", "werkzeug", "pynamodb", "msgspec", "zappa", "handler", "boto3", "botocore")


class FakeContext:
    """The attributes of the Lambda context object that handlers read."""

    def __init__(self, function_name: str, timeout_ms: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def runtime_dir(site_packages: Path) -> Path:
    """A directory holding only the runtime's libraries, linked from ``site_packages``."""
    target = Path(tempfile.mkdtemp(prefix="lambda-runtime-"))
    for name in RUNTIME_LIBRARIES:
        source = site_packages / name
        if not source.exists():
            raise SystemExit(f"{name} not found in {site_packages}")
        (target / name).symlink_to(source)
    return target


def package_dir(package: Path) -> Path:
    """The package as a directory (a zip is extracted, as Lambda does, into a fresh one)."""
    if package.is_dir():
        return package
    target = Path(tempfile.mkdtemp(prefix="lambda-task-"))
    with zipfile.ZipFile(package) as archive:
        archive.extractall(target)
    return target


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="the zip from `zappa package`, or its contents")
    parser.add_argument("--runtime-site", type=Path, required=True, help="site-packages to take boto3 & co. from")
    parser.add_argument("--handler", default="connection_manager.handler.lambda_handler")
    parser.add_argument("--function-name", default=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "connection-manager"))
    parser.add_argument("--timeout-ms", type=int, default=300_000)
    parser.add_argument("--events", type=Path, required=True, help="a JSON array of events")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    # Relative paths mean the caller's directory: resolved before this process moves into the package.
    events_path, output_path = args.events.resolve(), args.output.resolve()

    task_root = package_dir(args.package.resolve())
    runtime = runtime_dir(args.runtime_site.resolve())
    # The folders made here go when this process does (a zip is unpacked afresh each run).
    for made in (task_root, runtime):
        if made != args.package.resolve():
            atexit.register(shutil.rmtree, made, True)
    # Lambda's order: the function's code first, then the runtime's libraries, then the stdlib.
    sys.path[:0] = [str(task_root), str(runtime)]
    os.chdir(task_root)
    os.environ.setdefault("LAMBDA_TASK_ROOT", str(task_root))
    os.environ.setdefault("AWS_EXECUTION_ENV", "AWS_Lambda_python3.11")

    events = json.loads(events_path.read_text(encoding="utf-8"))
    module_name, function_name = args.handler.rsplit(".", 1)
    handler = getattr(importlib.import_module(module_name), function_name)

    results: list[Any] = []
    flask_loaded: list[bool] = []
    for event in events:
        context = FakeContext(args.function_name, args.timeout_ms)
        try:
            results.append({"ok": _jsonable(handler(event, context))})
        except BaseException as exc:  # the runtime reports any failure as the invocation's error
            results.append({"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()})
        flask_loaded.append("flask" in sys.modules)

    origins = {
        name: getattr(sys.modules[name], "__file__", None) for name in REPORTED_MODULES if name in sys.modules
    }
    output_path.write_text(
        json.dumps({"results": results, "flask_loaded": flask_loaded, "origins": origins, "task_root": str(task_root)}),
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
