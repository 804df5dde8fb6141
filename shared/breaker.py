"""A circuit breaker: stop calling a dependency that keeps failing, and try again later.

thrifty sits in the path of every LLM call. When Redis is down, each lookup would otherwise wait
for a connection timeout; after ``failures`` consecutive failures the breaker *opens* and callers
skip the dependency at once (a miss, not an error). After ``cooldown`` seconds it lets one call
through (*half-open*): success closes it, failure opens it again for another cooldown.

One warning is logged when the breaker opens and one info line when it closes again; nothing is
logged per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("thrifty.breaker")


class CircuitBreaker:
    """Thread-safe breaker for one dependency, named in its log lines (e.g. the Redis URL)."""

    def __init__(self, name: str, *, failures: int = 3, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failures_to_open = max(1, failures)
        self.cooldown = cooldown
        self.clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_count = 0

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    @property
    def ready(self) -> bool:
        """Whether :meth:`allow` would let a call through now (without taking the probe)."""
        with self._lock:
            if self._opened_at is None:
                return True
            return not self._probing and self.clock() - self._opened_at >= self.cooldown

    def allow(self) -> bool:
        """Whether a call may go to the dependency now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self.clock() - self._opened_at < self.cooldown:
                return False
            self._probing = True  # half-open: this one call is the probe
            return True

    def success(self) -> bool:
        """Record a successful call; True when it closed an open breaker (the dependency is back,
        and may have restarted empty)."""
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive = 0
            self._opened_at = None
            self._probing = False
        if was_open:
            log.info("thrifty: %s is reachable again", self.name)
        return was_open

    def failure(self, error: BaseException) -> None:
        with self._lock:
            self._consecutive += 1
            if self._opened_at is not None:  # a failed probe: wait another cooldown, quietly
                self._opened_at = self.clock()
                self._probing = False
                return
            if self._consecutive < self.failures_to_open:
                return
            self._opened_at = self.clock()
            self.opened_count += 1
        log.warning("thrifty: %s is failing (%s: %s); going on without it, retrying every %g s",
                    self.name, type(error).__name__, error, self.cooldown)
