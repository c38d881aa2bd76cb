"""Presence throughput and cost: events one consumer publishes per second, on real parts.

Seeds ``--users`` users with ``--devices`` connections each on DynamoDB Local (with its
stream), reads the stream as Lambda would, and feeds it to ``lambda_handler`` in batches of
``--batch`` records, publishing to a loopback ``PutEvents`` stand-in with ``--bus-ms`` of
latency per call. Prints, side by side in one run: the consumer's events per second and
records per second, and the write and read units presence spent per change (the baseline
is the connect itself: the units the row's own writes cost). Then disconnects everyone and
does the same for the closes. ``--reconnects N`` first opens and closes N connections of
every user, as a client that reconnects all day does, so the cost per change shows whether
it grows with a user's history.

    .venv/bin/python benchmarks/bench_presence.py --users 200 --devices 2
    .venv/bin/python benchmarks/bench_presence.py --users 50 --devices 2 --reconnects 200
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--bus-ms", type=float, default=20.0)
    parser.add_argument("--reconnects", type=int, default=0,
                        help="connections each user opened and closed earlier the same day")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")

    import connection_manager.wiring as wiring
    from connection_manager.config import Settings
    from connection_manager.handler import lambda_handler
    from models.connection import DisconnectReason
    from tests.support.capacity_meter import CapacityMeter
    from tests.support.dynamodb_local import DynamoDBLocal
    from tests.support.putevents_standin import PutEventsStandIn
    from tests.support.stream_reader import StreamReader

    with DynamoDBLocal() as server, PutEventsStandIn() as bus:
        bus.delay_ms = args.bus_ms
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = server.url
        os.environ["AWS_ENDPOINT_URL_EVENTBRIDGE"] = bus.url
        service = wiring.build_service(Settings(table_name="bench", region="us-east-1", presence_event_bus="presence"))
        wiring._service = service
        service.create_table()
        stream = StreamReader(server.url, "bench")
        rows = CapacityMeter(service.model._get_connection().connection.client)
        presence = CapacityMeter(service.platform.records._get_connection().connection.client)
        for attempt in range(args.reconnects):  # the day's earlier connections of every user
            for user in range(args.users):
                service.register_connection(f"u{user}-r{attempt}", f"u{user}")
                service.disconnect(f"u{user}-r{attempt}", DisconnectReason.CLIENT)
        records = stream.read()
        for start in range(0, len(records), args.batch):
            lambda_handler({"Records": records[start:start + args.batch]})
        stream.read()  # presence's own writes of those changes, which the consumer skips
        bus.entries.clear()

        print(f"{args.users} users x {args.devices} devices, {args.reconnects} earlier connections each today; "
              f"PutEvents +{args.bus_ms:.0f} ms; batches of {args.batch}")
        print(f"{'phase':<12}{'records':>9}{'events':>8}{'events/s':>10}{'records/s':>11}"
              f"{'row WU/change':>15}{'presence WU':>13}{'presence RU':>13}{'items read':>13}")
        for phase in ("connect", "disconnect"):
            before_rows = Counter(rows.units)
            for user in range(args.users):
                for device in range(args.devices):
                    if phase == "connect":
                        service.register_connection(f"u{user}-d{device}", f"u{user}")
                if phase == "disconnect":
                    service.admin_disconnect_user(f"u{user}")
            row_units = sum((rows.units - before_rows).values())
            records = stream.read()
            events_before, units_before, asked_before = len(bus.entries), Counter(presence.units), presence.items_asked
            reads_before = sum(presence.reads.values())
            started = time.perf_counter()
            for start in range(0, len(records), args.batch):
                answer = lambda_handler({"Records": records[start:start + args.batch]})
                assert answer == {"batchItemFailures": []}, answer
            seconds = time.perf_counter() - started
            changes = args.users * args.devices
            events = len(bus.entries) - events_before
            spent = sum((presence.units - units_before).values())
            read = sum(presence.reads.values()) - reads_before
            print(f"{phase:<12}{len(records):>9}{events:>8}{events / seconds:>10.0f}{len(records) / seconds:>11.0f}"
                  f"{row_units / changes:>15.2f}{spent / changes:>13.2f}{read / changes:>13.2f}"
                  f"{(presence.items_asked - asked_before) / changes:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
