"""The sweep with reconciliation: API Gateway asked concurrently against one row at a time.

Before it marks a stale-looking row, the sweep asks API Gateway's ``@connections`` API
(GetConnection). That adds one gateway round trip per stale row with an endpoint, 20 to 50
ms from a Lambda function. This benchmark runs the sweep over rows whose sockets are a
third gone (410), a third in use (reconciled) and a third idle (stale), with the
stand-in of the ``@connections`` API (``tests/support/gateway_standin.py``) adding the
round trip and the project's DynamoDB proxy adding a DynamoDB one, at the configured
concurrency and at 1.

    python benchmarks/bench_gateway.py --rows 300 --gateway-ms 20,50 --dynamo-ms 5

Not part of the test suite. Everything listens on loopback.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_scale import STALE_AFTER, TABLE, _local_aws_environment  # noqa: E402
from tests.support.dynamo_proxy import DynamoProxy  # noqa: E402
from tests.support.gateway_standin import GatewayStandIn  # noqa: E402
from tests.support.moto_server import MotoServer  # noqa: E402

ENDPOINT = "https://abcdef1234.execute-api.us-east-1.amazonaws.com/production"


def seed(service: Any, standin: GatewayStandIn, rows: int, prefix: str) -> None:
    """``rows`` stale-looking rows with endpoints; the stand-in knows a third gone, a third in use, a third idle."""
    from connection_manager.service import new_connection_row

    now = service.clock()
    idle = now - timedelta(seconds=STALE_AFTER * 2)
    with service.model.batch_write() as batch:
        for index in range(rows):
            connection_id = f"{prefix}-{index:05d}"
            batch.save(new_connection_row(connection_id, "bench", idle, model=service.model, endpoint=ENDPOINT))
            if index % 3 == 1:
                standin.open(connection_id, idle, now - timedelta(seconds=30))
            elif index % 3 == 2:
                standin.open(connection_id, idle, idle)


def sweep(service: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    body = service.cleanup_stale_connections().to_body()
    return time.perf_counter() - started, body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300, help="stale-looking rows with an endpoint")
    parser.add_argument("--gateway-ms", default="20,50", help="API Gateway round trips to try, comma-separated")
    parser.add_argument("--dynamo-ms", type=float, default=5.0, help="latency the proxy adds to every DynamoDB request")
    parser.add_argument("--concurrency", type=int, default=16, help="SWEEP_CONCURRENCY of the concurrent run")
    args = parser.parse_args(argv)
    _local_aws_environment()

    from dataclasses import replace

    from connection_manager.config import Settings
    from connection_manager.gateway import Gateway
    from connection_manager.wiring import build_service

    results = []
    with MotoServer() as moto, DynamoProxy(moto.url, latency_ms=args.dynamo_ms) as proxy, GatewayStandIn() as standin:
        import os

        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = proxy.url
        os.environ["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] = standin.url
        for gateway_ms in [float(v) for v in args.gateway_ms.split(",")]:
            for concurrency in (args.concurrency, 1):
                moto.reset()
                settings = Settings(table_name=TABLE, region="us-east-1", stale_after_seconds=STALE_AFTER,
                                    sweep_concurrency=concurrency, gateway_endpoint_override=standin.url)
                service = build_service(settings)
                service.gateway = Gateway(replace(settings))
                service.create_table()
                standin.latency_ms = 0
                seed(service, standin, args.rows, f"g{int(gateway_ms)}c{concurrency}")
                standin.reset_calls()
                standin.latency_ms = gateway_ms
                seconds, body = sweep(service)
                results.append((gateway_ms, concurrency, seconds, body, standin.max_in_flight))
                print(f"gateway {gateway_ms:.0f} ms, concurrency {concurrency}: {seconds:.2f} s", file=sys.stderr)

    print(f"{args.rows} stale-looking rows with an endpoint (1/3 gone, 1/3 in use, 1/3 idle); "
          f"DynamoDB +{args.dynamo_ms:.0f} ms per request\n")
    print("| gateway round trip | concurrency | sweep s | rows/s | gone | reconciled | stale | gateway calls in flight (max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for gateway_ms, concurrency, seconds, body, in_flight in results:
        stale = body["cleanedCount"] - body["goneCount"]
        print(f"| {gateway_ms:.0f} ms | {concurrency} | {seconds:.2f} | {args.rows / seconds:,.0f} | {body['goneCount']} | "
              f"{body['reconciledCount']} | {stale} | {in_flight} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
