"""Per-client rate limiting: a token bucket per client, in memory.

Used for placing orders (per caller: principal kind and subject, or address without
auth) and for failed authentications (per address). The address is the connection's
peer, or what a trusted proxy says it is (ORDERFLOW_GATEWAY_TRUSTED_PROXIES).

Each gateway replica limits on its own (a client spread over N replicas gets up to N
times the rate); that bounds abuse without a shared store on the order path.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from orderflow.errors import RateLimitedError

MAX_CLIENTS = 100_000


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
        what: str = "orders from this client",
    ) -> None:
        self.what = what
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        # client -> (tokens, when last refilled); oldest-used first, so the LRU is dropped.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def take(self, client: str) -> None:
        """Spend one token of client's bucket, or raise RateLimitedError (with Retry-After)."""
        if not self.enabled:
            return
        self.check(client)
        self.spend(client)

    def check(self, client: str) -> None:
        """Raise RateLimitedError if client's bucket is empty; spend nothing."""
        if not self.enabled:
            return
        tokens = self._refilled(client)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / self.per_second)
            raise RateLimitedError(
                f"too many {self.what}; retry in {wait} s", retry_after_seconds=wait
            )

    def spend(self, client: str) -> None:
        """Spend one token of client's bucket, if it has one."""
        if not self.enabled:
            return
        self._buckets[client] = (max(0.0, self._refilled(client) - 1.0), self.clock())

    def _refilled(self, client: str) -> float:
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
        self._buckets[client] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return tokens
