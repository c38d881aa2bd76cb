"""Counting over every live row in flat memory: distinct users and the heaviest users.

The snapshot reads every live row once per sweep; at a million connections a set of user
ids or a dict of counts per user would hold hundreds of megabytes in a Lambda. Both
counters here are exact up to :data:`EXACT_UP_TO` keys and estimates beyond it, and say
which they are.
"""
from __future__ import annotations

import hashlib
import math

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

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))[:n]
