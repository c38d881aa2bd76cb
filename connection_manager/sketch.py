"""Counting over every live row in flat memory: distinct users and the heaviest users.

The snapshot reads every live row once per sweep; at a million connections a set of user
ids or a dict of counts per user would hold hundreds of megabytes in a Lambda. Both
counters here are exact up to :data:`EXACT_UP_TO` keys and estimates beyond it, and say
which they are.
"""
from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter
from typing import Any

#: Distinct keys kept exactly; beyond this the counters switch to bounded estimates.
EXACT_UP_TO = 10_000
#: HyperLogLog precision: 2**12 registers, about 1.6 % standard error, 4 KB.
_P = 12
_M = 1 << _P


class DistinctCounter:
    """Exact while small, then HyperLogLog (Flajolet et al. 2007, with linear counting for small ranges)."""

    def __init__(self, exact_up_to: int = EXACT_UP_TO) -> None:
        self._exact: set[str] | None = set()
        self._limit = exact_up_to
        self._registers = bytearray(_M)

    def add(self, key: str) -> None:
        digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
        index = digest >> (64 - _P)
        rest = digest & ((1 << (64 - _P)) - 1)
        rank = (64 - _P) - rest.bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank
        if self._exact is not None:
            self._exact.add(key)
            if len(self._exact) > self._limit:
                self._exact = None

    def add_many(self, keys: list[str]) -> None:
        """``add`` each key; a key already held exactly was hashed when it came, so it is not
        hashed again (most rows belong to a user seen before)."""
        exact = self._exact
        for key in set(keys) if exact is None else set(keys).difference(exact):
            self.add(key)

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def count(self) -> int:
        if self._exact is not None:
            return len(self._exact)
        alpha = 0.7213 / (1 + 1.079 / _M)
        estimate = alpha * _M * _M / sum(2.0 ** -r for r in self._registers)
        zeros = self._registers.count(0)
        if estimate <= 2.5 * _M and zeros:
            estimate = _M * math.log(_M / zeros)
        return round(estimate)

    def to_state(self, keep_exact: bool = True) -> dict[str, Any]:
        """A JSON-able form, so a count can go on in the next invocation; without the exact
        keys (``keep_exact=False``) it goes on as an estimate."""
        exact = sorted(self._exact) if keep_exact and self._exact is not None else None
        return {"registers": base64.b64encode(bytes(self._registers)).decode("ascii"), "exact": exact, "limit": self._limit}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DistinctCounter:
        counter = cls(int(state["limit"]))
        registers = base64.b64decode(state["registers"])
        if len(registers) != _M:
            raise ValueError(f"expected {_M} registers, got {len(registers)}")
        counter._registers = bytearray(registers)
        exact = state["exact"]
        counter._exact = None if exact is None else {str(key) for key in exact}
        return counter


class TopCounter:
    """The keys with the most occurrences: exact while small, then Misra-Gries (1982), whose
    counts may understate a key by at most (rows seen) / capacity; amortized O(1) per row."""

    def __init__(self, capacity: int = EXACT_UP_TO) -> None:
        self._capacity = capacity
        self._counts: dict[str, int] = {}
        self.exact = True

    def add(self, key: str) -> None:
        if key in self._counts:
            self._counts[key] += 1
        elif len(self._counts) < self._capacity:
            self._counts[key] = 1
        else:
            # Decrement every count and drop the zeros: paid for by the increments before it.
            self.exact = False
            self._counts = {k: c - 1 for k, c in self._counts.items() if c > 1}

    def add_many(self, keys: list[str]) -> None:
        """``add`` each key: by whole counts while every key fits, one by one once it is full."""
        counts = self._counts
        batch = Counter(keys)
        if len(counts) + sum(1 for key in batch if key not in counts) > self._capacity:
            for key in keys:
                self.add(key)
            return
        for key, n in batch.items():
            counts[key] = counts.get(key, 0) + n

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))[:n]

    def shrink(self, capacity: int) -> None:
        """Keep at most ``capacity`` keys the Misra-Gries way (subtract the count of the first key
        left out from every count), so the summary stays mergeable with the bound n / capacity."""
        if len(self._counts) <= capacity:
            return
        ranked = sorted(self._counts.values(), reverse=True)
        floor = ranked[capacity]
        self._counts = {key: count - floor for key, count in self._counts.items() if count > floor}
        self._capacity = capacity
        self.exact = False

    def to_state(self) -> dict[str, Any]:
        return {"counts": self._counts, "capacity": self._capacity, "exact": self.exact}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TopCounter:
        counter = cls(int(state["capacity"]))
        counter._counts = {str(key): int(count) for key, count in state["counts"].items()}
        counter.exact = bool(state["exact"])
        return counter
