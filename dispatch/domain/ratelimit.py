"""Token buckets keyed by who is asking (a token, a caller), with a bounded memory.

Invariants:
- a key never seen before, or idle long enough to refill, always has its full burst: a first
  request is never refused by a limit;
- at most `max_keys` keys are remembered; the least recently used is forgotten first (forgetting a
  key only ever gives it a fresh, full bucket);
- time is passed in (monotonic seconds): no clock is read here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    """One key's token bucket: tokens left and when they were counted."""

    tokens: float
    at: float


class RateLimiter:
    """`rate` requests per second sustained, `burst` at once, per key."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    def take(self, key: str, now: float) -> float:
        """Spend one request for `key`: 0.0 if allowed, else the seconds until one would be."""
        bucket = self._bucket(key, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
