"""Demo and benchmark data: live, stale and historical connections, written in batches.

Rows are built by the same function ``register_connection`` uses, so seeded data has
exactly the shape the service writes; BatchWriteItem (25 rows a request) keeps seeding
tens of thousands of rows quick.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from connection_manager.service import DISCONNECTED, new_connection_row
from models.connection import ConnectionModel, DisconnectReason, activity_bucket

_AGENTS = ("Mozilla/5.0 (Macintosh)", "Mozilla/5.0 (Windows NT 10.0)", "okhttp/4.12", "AIrium-iOS/3.2", "curl/8.5")


@dataclass(frozen=True)
class SeedPlan:
    live: int
    stale: int = 0
    history: int = 0
    users: int = 0
    stale_after_seconds: int = 3600
    prefix: str = "demo"
    seed: int = 7
    #: Live rows are created within it, so the next sweep does not end them (reason ``lifetime``).
    lifetime_seconds: int = 7200

    @property
    def total(self) -> int:
        return self.live + self.stale + self.history


def seed(
    plan: SeedPlan,
    now: datetime,
    progress: Callable[[int], None] | None = None,
    model: type[ConnectionModel] = ConnectionModel,
) -> int:
    """Write ``plan.total`` rows into ``model``'s table; returns how many. ``progress(n)`` is called per batch."""
    rng = random.Random(plan.seed)
    users = plan.users or max(1, plan.total // 3)
    written = 0
    with model.batch_write() as batch:
        for index in range(plan.total):
            kind = "live" if index < plan.live else "stale" if index < plan.live + plan.stale else "history"
            connection_id = f"{plan.prefix}-{kind}-{index:07d}"
            user_id = f"user-{rng.randrange(users):05d}"
            if kind == "live":
                age = rng.randrange(60, 6 * 3600)
                if age >= plan.lifetime_seconds:  # folded into the lifetime, drawing no more numbers
                    age = age % max(1, plan.lifetime_seconds - 60) + min(60, plan.lifetime_seconds - 1)
                created = now - timedelta(seconds=age)
                last_active = now - timedelta(seconds=rng.randrange(0, max(1, plan.stale_after_seconds // 2)))
            else:
                idle = plan.stale_after_seconds + rng.randrange(60, 48 * 3600)
                back = rng.randrange(60, 3600)
                room = plan.lifetime_seconds - plan.stale_after_seconds - 120
                if kind == "stale" and room > 120:
                    # Idle past the cutoff but younger than the lifetime, so the sweep marks it
                    # `stale` as the demo promises (an older row would end as `lifetime`).
                    idle = plan.stale_after_seconds + 60 + idle % (room // 2)
                    back = 60 + back % (room // 2)
                last_active = now - timedelta(seconds=idle)
                created = last_active - timedelta(seconds=back)
            metadata = {"sourceIp": f"203.0.113.{rng.randrange(1, 255)}", "userAgent": rng.choice(_AGENTS)}
            row = new_connection_row(connection_id, user_id, created, metadata, model)
            row.last_active_at = max(last_active, created)
            row.updated_at = row.last_active_at
            # The live index files a row under the bucket of its last activity, as every
            # activity write keeps it; left at createdAt's older bucket, a row is read by
            # each idle filter and sweep that reaches that bucket and returned by none.
            row.active_bucket = activity_bucket(row.last_active_at)
            if kind == "history":
                row.status = DISCONNECTED
                row.disconnect_reason = rng.choice(list(DisconnectReason)).value
                row.disconnected_at = row.last_active_at
                row.active_shard = None  # out of the live index, as a disconnect leaves it
                row.active_bucket = None
            batch.save(row)
            written += 1
            if progress and written % 25 == 0:
                progress(25)
    if progress and written % 25:
        progress(written % 25)
    return written
