"""Per-client rate limiting of order placement: a token bucket per client, in memory.

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
    ) -> None:
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
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.per_second)
            raise RateLimitedError(
                f"too many orders from this client; retry in {wait} s", retry_after_seconds=wait
            )
        self._buckets[client] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
