"""A Redis connection that fails open: timeouts, a circuit breaker, and sync and async clients.

Every distributed part of thrifty (the cache store, the in-flight table, budgets) talks to Redis
through a :class:`GuardedRedis`. A call that cannot reach Redis returns the caller's default and
feeds the breaker; while the breaker is open, calls return their default at once. A call that
reaches Redis but gets an error back (a wrong key type, an unknown command) also returns the
default, and is logged once per kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from .breaker import CircuitBreaker
from .log_once import LogOnce
from .settings import RedisSettings

log = logging.getLogger("thrifty.redis")

T = TypeVar("T")
TRANSIENT_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                    asyncio.TimeoutError)


def redact(url: str) -> str:
    """``url`` without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class GuardedRedis:
    """Sync and async Redis clients behind one circuit breaker.

    Args:
        url: the Redis URL.
        settings: timeouts and breaker tuning.
        purpose: what this connection is for, in log lines ("cache", "single-flight").
        on_failure: called when Redis did not answer (before the breaker counts it).
        on_error: called when Redis answered an error; return True if handled (not logged).
    """

    def __init__(self, url: str, settings: RedisSettings, purpose: str,
                 on_failure: Callable[[BaseException], None] | None = None,
                 on_error: Callable[[redis.exceptions.RedisError], bool] | None = None) -> None:
        self.url = url
        self.settings = settings
        self.breaker = CircuitBreaker(f"Redis {purpose} at {redact(url)}", failures=settings.breaker_failures,
                                      cooldown=settings.breaker_cooldown)
        self._options: dict[str, Any] = {
            "socket_timeout": settings.operation_timeout, "socket_connect_timeout": settings.connect_timeout,
            "retry_on_timeout": False, "health_check_interval": 0,
        }
        # A blocking pool: a burst of callers waits its turn for a connection (up to the operation
        # timeout) instead of failing with "too many connections" - which would read as an outage.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=settings.max_connections,
                                                     timeout=settings.operation_timeout, **self._options)
        self.client = redis.Redis(connection_pool=pool)
        self._async_clients: dict[int, aioredis.Redis] = {}
        self._on_failure = on_failure
        self._on_error = on_error
        self.log_once = LogOnce(log)

    @property
    def available(self) -> bool:
        """False while the breaker is open and cooling down."""
        return self.breaker.ready

    def aclient(self, **options: Any) -> aioredis.Redis:
        """The asyncio client of the running event loop (a client is bound to its first loop)."""
        loop = id(asyncio.get_running_loop())
        client = self._async_clients.get(loop)
        if client is None:
            if len(self._async_clients) > 8:  # loops come and go (asyncio.run per call)
                self._async_clients.clear()
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.settings.max_connections, timeout=self.settings.operation_timeout,
                **{**self._options, **options})
            client = self._async_clients[loop] = aioredis.Redis(connection_pool=pool)
        return client

    def run(self, call: Callable[[], T], default: T) -> T:
        """``call()``, or ``default`` when Redis is unreachable, failing, or answers an error."""
        if not self.breaker.allow():
            return default
        try:
            result = call()
        except TRANSIENT_ERRORS as exc:
            self._failed(exc)
            return default
        except redis.exceptions.RedisError as exc:
            self.answered(exc)
            return default
        self.answered()
        return result

    async def arun(self, call: Callable[[], Awaitable[T]], default: T, timeout: float | None = None) -> T:
        """Async twin of :meth:`run`; ``timeout`` bounds the whole call (default: twice the
        operation timeout)."""
        if not self.breaker.allow():
            return default
        try:
            result = await asyncio.wait_for(call(), timeout or self.settings.operation_timeout * 2)
        except TRANSIENT_ERRORS as exc:
            self._failed(exc)
            return default
        except redis.exceptions.RedisError as exc:
            self.answered(exc)
            return default
        self.answered()
        return result

    def answered(self, error: redis.exceptions.RedisError | None = None) -> None:
        """Redis answered (possibly with an error about the data or the command)."""
        self.breaker.success()
        if error is not None and not (self._on_error is not None and self._on_error(error)):
            self.log_once(str(error).split(" ")[0], "thrifty: Redis error (%s); carrying on without it", error)

    def close(self) -> None:
        self.client.close()

    def _failed(self, error: BaseException) -> None:
        if self._on_failure is not None:
            self._on_failure(error)
        self.breaker.failure(error)
