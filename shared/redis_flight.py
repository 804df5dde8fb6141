"""Single-flight across processes and machines, through Redis.

The first process to ask for a key takes a *lease*: ``SET <prefix>:flight:lease:<key> <token> NX
PX <lease>``. It renews the lease while its call runs, and when the call ends it stores the
outcome under ``<prefix>:flight:result:<key>`` (for ``result_ttl`` seconds, for late comers),
publishes it on ``<prefix>:flight:done:<key>`` and releases the lease, in one script. Other
processes subscribe to that channel and wait - no polling loop hammering Redis: they wake on the
message, or every half lease to check that the leader is still alive. When the lease has expired
without a result (the leader crashed or hung) or the leader gave up (a failure that is not
deterministic), one of the waiting processes takes the lease over and makes the call itself.

Outcomes are strings (the caller serialises them). Every Redis call goes through
:class:`~thrifty.redis_client.GuardedRedis`: when Redis is unreachable, :meth:`acquire` says "go
ahead alone" and :meth:`wait` gives up, so a down Redis costs duplicate calls, never a stuck one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from .redis_client import GuardedRedis
from .settings import DedupSettings, RedisSettings

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_FINISH = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
redis.call('PUBLISH', KEYS[3], ARGV[4] == 'done' and ARGV[2] or 'retry')
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

Outcome = Literal["result", "takeover", "timeout"]


@dataclass(frozen=True)
class Lease:
    """Leadership of one key. ``local`` leases were granted without Redis (it is unavailable)."""

    key: str
    token: str
    local: bool = False


@dataclass(frozen=True)
class Waited:
    """What a follower got: the leader's ``payload``, a ``lease`` to take over, or nothing."""

    outcome: Outcome
    payload: str | None = None
    lease: Lease | None = None


class RedisFlight:
    """The cross-process in-flight table. Thread-safe; async methods never block the loop."""

    def __init__(self, url: str, redis_settings: RedisSettings, dedup: DedupSettings) -> None:
        self.redis = GuardedRedis(url, redis_settings, "single-flight")
        self.dedup = dedup
        self.prefix = f"{redis_settings.key_prefix}:flight"
        self._lease_ms = int(dedup.lease_seconds * 1000)
        self._renewers: dict[str, threading.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        client = self.redis.client
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)

    # ------------------------------------------------------------------ keys
    def _keys(self, key: str) -> tuple[str, str, str]:
        return (f"{self.prefix}:lease:{key}", f"{self.prefix}:result:{key}", f"{self.prefix}:done:{key}")

    # ------------------------------------------------------------------ leader side
    def acquire(self, key: str) -> Lease | None:
        """Leadership of ``key``, or None when another process holds it. Renewed until finished."""
        token = uuid.uuid4().hex
        lease_key = self._keys(key)[0]
        def take() -> Any:
            return self.redis.client.set(lease_key, token, nx=True, px=self._lease_ms)

        got = self.redis.run(take, "down")
        if got == "down":
            return Lease(key, token, local=True)
        if not got:
            return None
        lease = Lease(key, token)
        self._start_renewing(lease)
        return lease

    async def aacquire(self, key: str) -> Lease | None:
        token = uuid.uuid4().hex
        lease_key = self._keys(key)[0]
        client = self.redis.aclient()
        got: Any = await self.redis.arun(lambda: client.set(lease_key, token, nx=True, px=self._lease_ms), "down")
        if got == "down":
            return Lease(key, token, local=True)
        if not got:
            return None
        lease = Lease(key, token)
        self._start_renewing_async(lease)
        return lease

    def finish(self, lease: Lease, payload: str | None) -> None:
        """End the leadership: store and publish ``payload`` (the outcome followers should get),
        or, with ``payload=None``, just release the lease and wake followers to take over."""
        self._stop_renewing(lease)
        if lease.local:
            return
        lease_key, result_key, channel = self._keys(lease.key)
        args: list[str | int] = [lease.token, payload or "", int(self.dedup.result_ttl * 1000),
                                 "done" if payload else "retry"]
        self.redis.run(lambda: self._finish(keys=[lease_key, result_key, channel], args=args), None)

    async def afinish(self, lease: Lease, payload: str | None) -> None:
        self._stop_renewing(lease)
        if lease.local:
            return
        lease_key, result_key, channel = self._keys(lease.key)
        args: list[str | int] = [lease.token, payload or "", int(self.dedup.result_ttl * 1000),
                                 "done" if payload else "retry"]
        client = self.redis.aclient()
        await self.redis.arun(lambda: client.eval(_FINISH, 3, lease_key, result_key, channel, *args), None)

    # ------------------------------------------------------------------ follower side
    def wait(self, key: str, deadline: float) -> Waited:
        """Wait (blocking) for the leader of ``key`` until ``deadline`` (a ``time.time()``)."""
        lease_key, result_key, channel = self._keys(key)
        pubsub = self.redis.run(lambda: self._subscribed(channel), None)
        if pubsub is None:
            return Waited("timeout")
        try:
            while True:
                found = self._check(key, lease_key, result_key)
                if found is not None:
                    return found
                remaining = deadline - time.time()
                if remaining <= 0:
                    return Waited("timeout")
                wake = min(remaining, self.dedup.lease_seconds / 2)
                message = self.redis.run(partial(pubsub.get_message, ignore_subscribe_messages=True, timeout=wake),
                                         "down")
                if message == "down":
                    return Waited("timeout")
                published = _payload(message)
                if published is not None:
                    return Waited("result", payload=published)
        finally:
            self.redis.run(pubsub.close, None)

    async def await_(self, key: str, deadline: float) -> Waited:
        """Async twin of :meth:`wait`."""
        lease_key, result_key, channel = self._keys(key)
        client = self.redis.aclient()
        pubsub: Any = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            subscribed: Any = await self.redis.arun(lambda: pubsub.subscribe(channel), "down")
            if subscribed == "down":
                return Waited("timeout")
            while True:
                found = await self._acheck(key, lease_key, result_key)
                if found is not None:
                    return found
                remaining = deadline - time.time()
                if remaining <= 0:
                    return Waited("timeout")
                wake = min(remaining, self.dedup.lease_seconds / 2)
                message = await self.redis.arun(
                    partial(pubsub.get_message, ignore_subscribe_messages=True, timeout=wake), "down",
                    timeout=wake + self.redis.settings.operation_timeout * 2)
                if message == "down":
                    return Waited("timeout")
                published = _payload(message)
                if published is not None:
                    return Waited("result", payload=published)
        finally:
            await self.redis.arun(pubsub.aclose, None)

    def _subscribed(self, channel: str) -> Any:
        pubsub = self.redis.client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(channel)
        return pubsub

    def _check(self, key: str, lease_key: str, result_key: str) -> Waited | None:
        """A result, a lease to take over (no leader any more), or None (keep waiting)."""
        def read() -> Any:
            pipe = self.redis.client.pipeline(transaction=False)
            pipe.get(result_key)
            pipe.exists(lease_key)
            return pipe.execute()

        state = self.redis.run(read, None)
        if state is None:
            return Waited("timeout")
        result, leader_alive = state
        if result is not None:
            return Waited("result", payload=result.decode() if isinstance(result, bytes) else str(result))
        if leader_alive:
            return None
        lease = self.acquire(key)
        if lease is not None:
            return Waited("takeover", lease=lease)
        return None

    async def _acheck(self, key: str, lease_key: str, result_key: str) -> Waited | None:
        client = self.redis.aclient()

        async def read() -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.get(result_key)
            pipe.exists(lease_key)
            return await pipe.execute()

        state = await self.redis.arun(read, None)
        if state is None:
            return Waited("timeout")
        result, leader_alive = state
        if result is not None:
            return Waited("result", payload=result.decode() if isinstance(result, bytes) else str(result))
        if leader_alive:
            return None
        lease = await self.aacquire(key)
        if lease is not None:
            return Waited("takeover", lease=lease)
        return None

    # ------------------------------------------------------------------ lease renewal
    def _start_renewing(self, lease: Lease) -> None:
        stop = threading.Event()
        self._renewers[lease.token] = stop
        lease_key = self._keys(lease.key)[0]
        give_up = time.time() + self.dedup.max_wait

        def renew() -> None:
            while not stop.wait(self.dedup.lease_seconds / 3):
                if time.time() > give_up:
                    return  # a call longer than any follower waits: let the lease lapse
                self.redis.run(lambda: self._renew(keys=[lease_key], args=[lease.token, self._lease_ms]), None)

        threading.Thread(target=renew, name=f"thrifty-lease-{lease.key[:8]}", daemon=True).start()

    def _start_renewing_async(self, lease: Lease) -> None:
        lease_key = self._keys(lease.key)[0]
        client = self.redis.aclient()
        give_up = time.time() + self.dedup.max_wait

        async def renew() -> None:
            while time.time() < give_up:
                await asyncio.sleep(self.dedup.lease_seconds / 3)
                await self.redis.arun(lambda: client.eval(_RENEW, 1, lease_key, lease.token, self._lease_ms), None)

        self._tasks[lease.token] = asyncio.get_running_loop().create_task(renew())

    def _stop_renewing(self, lease: Lease) -> None:
        stop = self._renewers.pop(lease.token, None)
        if stop is not None:
            stop.set()
        task = self._tasks.pop(lease.token, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for stop in self._renewers.values():
            stop.set()
        self.redis.close()


def _payload(message: Any) -> str | None:
    """The outcome carried by a "done" message (the leader publishes it whole), else None."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return None
    data = message.get("data")
    text = data.decode() if isinstance(data, bytes) else str(data)
    return None if text == "retry" else text
