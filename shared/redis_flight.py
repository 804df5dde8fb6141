"""Single-flight across processes and machines, through Redis: :class:`RedisFlights`.

The first process to ask for a key takes a *lease*: ``SET <prefix>:flight:lease:<key> <token> NX
PX <lease>``. It renews the lease while its call runs, and when the call ends it stores the
outcome under ``<prefix>:flight:result:<key>`` (for ``result_ttl`` seconds, for late comers),
publishes it on ``<prefix>:flight:done:<key>`` and releases the lease, in one script. Other
processes subscribe to that channel and wait - no polling loop hammering Redis: they wake on the
message, or every half lease to check that the leader is still alive. When the lease has expired
without a result (the leader crashed or hung) or the leader gave up (a failure that is not
deterministic), one of the waiting processes takes the lease over and makes the call itself.

The wire format (:func:`encode` / :func:`decode`) lives here, with the only code that speaks it:
an answer travels as ``{"ok": true, "completion": {...}}``, a shared failure as ``{"ok": false,
"message", "status_code", "kind", "stream"}`` and is raised in the followers as
:class:`~thrifty.upstream.UpstreamError` (:class:`~thrifty.upstream.StreamFailed` for a broken
stream); ``retry`` on the channel wakes the followers to take over.

Every Redis call goes through :class:`~thrifty.redis_client.GuardedRedis`: when Redis is
unreachable, :meth:`RedisFlights.acquire` grants a local lease ("go ahead alone") and
:meth:`RedisFlights.follow` gives up, so a down Redis costs duplicate calls, never a stuck one.
A ``SET NX`` whose reply never came (Redis slower than the operation timeout) may still have
taken the lease, which nobody would renew or release: followers would wait for that phantom
leader until the lease lapsed. Such a lease is released (if it is still this token's, waking its
followers to take over) before the process's next acquire that Redis answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from .completion import Completion
from .flights import Lease, Outcome, Waited, local_lease
from .plan import Plan, arun, run
from .redis_client import GuardedRedis
from .settings import DedupSettings, RedisSettings
from .upstream import StreamFailed, UpstreamError

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
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'retry')
end
return 1
"""
_RETRY = "retry"
_UNCONFIRMED_KEPT = 10_000
_DOWN = object()  # what a guarded call returns when Redis did not answer


def encode(outcome: Completion | BaseException) -> str:
    """An outcome as it travels to other processes."""
    if isinstance(outcome, Completion):
        return json.dumps({"ok": True, "completion": {**asdict(outcome), "answer": dict(outcome.answer)}},
                          ensure_ascii=False, separators=(",", ":"))
    kind = outcome.kind if isinstance(outcome, UpstreamError) else type(outcome).__name__
    return json.dumps({"ok": False, "message": str(outcome), "status_code": getattr(outcome, "status_code", None),
                       "kind": kind, "stream": isinstance(outcome, StreamFailed)})


def decode(payload: str | bytes) -> Waited:
    """What a follower gets from a published or stored outcome."""
    data = json.loads(payload)
    if data.get("ok"):
        return Waited("answer", completion=Completion(**data["completion"]))
    cls = StreamFailed if data.get("stream") else UpstreamError
    return Waited("error", error=cls(str(data.get("message")), status_code=data.get("status_code"),
                                     kind=data.get("kind")))


# What following a key asks of Redis; the follower's policy is written once, in _follow_plan.
@dataclass(frozen=True)
class _ReadState:
    lease_key: str
    result_key: str


@dataclass(frozen=True)
class _Acquire:
    key: str


@dataclass(frozen=True)
class _NextMessage:
    timeout: float


class RedisFlights:
    """:class:`~thrifty.flights.Flights` through Redis. Thread-safe; async methods never block
    the loop."""

    def __init__(self, url: str, redis_settings: RedisSettings, dedup: DedupSettings) -> None:
        self.redis = GuardedRedis(url, redis_settings, "single-flight")
        self.dedup = dedup
        self.prefix = f"{redis_settings.key_prefix}:flight"
        self._lease_ms = int(dedup.lease_seconds * 1000)
        self._renewers: dict[str, threading.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # token -> key of a lease SET whose reply never came: perhaps taken, to release
        self._unconfirmed: dict[str, str] = {}
        self._unconfirmed_lock = threading.Lock()
        client = self.redis.client
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)

    def keys(self, key: str) -> tuple[str, str, str]:
        """The lease key, the result key and the channel of ``key``."""
        return (f"{self.prefix}:lease:{key}", f"{self.prefix}:result:{key}", f"{self.prefix}:done:{key}")

    # ------------------------------------------------------------------ leader side
    def acquire(self, key: str) -> Lease | None:
        token = uuid.uuid4().hex
        lease_key = self.keys(key)[0]
        self._release_unconfirmed()
        sent = self.redis.available
        got = self.redis.run(lambda: self.redis.client.set(lease_key, token, nx=True, px=self._lease_ms), _DOWN)
        if got is _DOWN:
            self._unconfirmed_lease(key, token, sent)
            return local_lease(key)
        if not got:
            return None
        lease = Lease(key, token)
        self._start_renewing(lease)
        return lease

    async def aacquire(self, key: str) -> Lease | None:
        token = uuid.uuid4().hex
        lease_key = self.keys(key)[0]
        client = self.redis.aclient()
        await self._arelease_unconfirmed()
        sent = self.redis.available
        got = await self.redis.arun(lambda: client.set(lease_key, token, nx=True, px=self._lease_ms), _DOWN)
        if got is _DOWN:
            self._unconfirmed_lease(key, token, sent)
            return local_lease(key)
        if not got:
            return None
        lease = Lease(key, token)
        self._start_renewing_async(lease)
        return lease

    def _unconfirmed_lease(self, key: str, token: str, sent: bool) -> None:
        """The lease SET for ``key`` failed: if it was sent, it may have taken the lease."""
        if not sent:  # the breaker was open: nothing reached Redis
            return
        with self._unconfirmed_lock:
            self._unconfirmed[token] = key
            while len(self._unconfirmed) > _UNCONFIRMED_KEPT:  # the oldest lapse by themselves
                self._unconfirmed.pop(next(iter(self._unconfirmed)))

    def _take_unconfirmed(self) -> list[tuple[str, str]]:
        if not self._unconfirmed or not self.redis.available:
            return []
        with self._unconfirmed_lock:
            taken = list(self._unconfirmed.items())
            self._unconfirmed.clear()
        return taken

    def _keep_unconfirmed(self, taken: list[tuple[str, str]]) -> None:
        with self._unconfirmed_lock:
            for token, key in taken:
                self._unconfirmed.setdefault(token, key)

    def _queue_releases(self, pipe: Any, taken: list[tuple[str, str]]) -> Any:
        """``pipe`` with a release of each (token, key) in ``taken`` queued."""
        for token, key in taken:
            lease_key, _, channel = self.keys(key)
            pipe.eval(_RELEASE, 2, lease_key, channel, token)
        return pipe

    def _release_unconfirmed(self) -> None:
        taken = self._take_unconfirmed()
        if not taken:
            return

        def release() -> Any:
            return self._queue_releases(self.redis.client.pipeline(transaction=False), taken).execute()

        if self.redis.run(release, _DOWN) is _DOWN:
            self._keep_unconfirmed(taken)

    async def _arelease_unconfirmed(self) -> None:
        taken = self._take_unconfirmed()
        if not taken:
            return
        client = self.redis.aclient()

        async def release() -> Any:
            return await self._queue_releases(client.pipeline(transaction=False), taken).execute()

        if await self.redis.arun(release, _DOWN) is _DOWN:
            self._keep_unconfirmed(taken)

    def finish(self, lease: Lease, outcome: Outcome) -> None:
        self._stop_renewing(lease)
        if not lease.local:
            keys, args = self._finish_call(lease, outcome)
            self.redis.run(lambda: self._finish(keys=keys, args=args), None)

    async def afinish(self, lease: Lease, outcome: Outcome) -> None:
        self._stop_renewing(lease)
        if not lease.local:
            keys, args = self._finish_call(lease, outcome)
            client = self.redis.aclient()
            await self.redis.arun(lambda: client.eval(_FINISH, len(keys), *keys, *args), None)

    def _finish_call(self, lease: Lease, outcome: Outcome) -> tuple[list[str], list[str | int]]:
        payload = encode(outcome) if outcome is not None else ""
        args: list[str | int] = [lease.token, payload, int(self.dedup.result_ttl * 1000),
                                 "done" if payload else _RETRY]
        return list(self.keys(lease.key)), args

    # ------------------------------------------------------------------ follower side
    def follow(self, key: str, deadline: float) -> Waited:
        channel = self.keys(key)[2]
        pubsub = self.redis.run(lambda: self._subscribed(channel), None)
        if pubsub is None:
            return Waited("timeout")
        try:
            return run(self._follow_plan(key, deadline), partial(self._perform, pubsub))
        finally:
            self.redis.run(pubsub.close, None)

    async def afollow(self, key: str, deadline: float) -> Waited:
        channel = self.keys(key)[2]
        pubsub: Any = self.redis.aclient().pubsub()  # type: ignore[no-untyped-call]
        try:
            if await self.redis.arun(lambda: pubsub.subscribe(channel), _DOWN) is _DOWN:
                return Waited("timeout")
            return await arun(self._follow_plan(key, deadline), partial(self._aperform, pubsub))
        finally:
            await self.redis.arun(pubsub.aclose, None)

    def _follow_plan(self, key: str, deadline: float) -> Plan[Waited]:
        """Check for an outcome or a dead leader, then sleep on the channel (at most half a lease,
        to check the leader again) until the deadline."""
        lease_key, result_key, _ = self.keys(key)
        while True:
            state = yield _ReadState(lease_key, result_key)
            if state is _DOWN:
                return Waited("timeout")
            stored, leader_alive = state
            if stored is not None:
                return decode(stored)
            if not leader_alive:
                lease = yield _Acquire(key)
                if lease is not None:
                    return Waited("takeover", lease=lease)
            remaining = deadline - time.time()
            if remaining <= 0:
                return Waited("timeout")
            message = yield _NextMessage(min(remaining, self.dedup.lease_seconds / 2))
            if message is _DOWN:
                return Waited("timeout")
            published = _published(message)
            if published is not None:
                return decode(published)

    def _perform(self, pubsub: Any, op: Any) -> Any:
        if isinstance(op, _ReadState):
            def read() -> Any:
                pipe = self.redis.client.pipeline(transaction=False)
                pipe.get(op.result_key)
                pipe.exists(op.lease_key)
                return pipe.execute()

            return self.redis.run(read, _DOWN)
        if isinstance(op, _Acquire):
            return self.acquire(op.key)
        return self.redis.run(partial(pubsub.get_message, ignore_subscribe_messages=True, timeout=op.timeout),
                              _DOWN)

    async def _aperform(self, pubsub: Any, op: Any) -> Any:
        if isinstance(op, _ReadState):
            client = self.redis.aclient()

            async def read() -> Any:
                pipe = client.pipeline(transaction=False)
                pipe.get(op.result_key)
                pipe.exists(op.lease_key)
                return await pipe.execute()

            return await self.redis.arun(read, _DOWN)
        if isinstance(op, _Acquire):
            return await self.aacquire(op.key)
        return await self.redis.arun(
            partial(pubsub.get_message, ignore_subscribe_messages=True, timeout=op.timeout), _DOWN,
            timeout=op.timeout + self.redis.settings.operation_timeout * 2)

    def _subscribed(self, channel: str) -> Any:
        pubsub = self.redis.client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(channel)
        return pubsub

    # ------------------------------------------------------------------ lease renewal
    def _start_renewing(self, lease: Lease) -> None:
        stop = threading.Event()
        self._renewers[lease.token] = stop
        lease_key = self.keys(lease.key)[0]
        give_up = time.time() + self.dedup.max_wait

        def renew() -> None:
            while not stop.wait(self.dedup.lease_seconds / 3):
                if time.time() > give_up:
                    return  # a call longer than any follower waits: let the lease lapse
                self.redis.run(lambda: self._renew(keys=[lease_key], args=[lease.token, self._lease_ms]), None)

        threading.Thread(target=renew, name=f"thrifty-lease-{lease.key[:8]}", daemon=True).start()

    def _start_renewing_async(self, lease: Lease) -> None:
        lease_key = self.keys(lease.key)[0]
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


def _published(message: Any) -> str | None:
    """The outcome carried by a "done" message (the leader publishes it whole), else None."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return None
    data = message.get("data")
    text = data.decode() if isinstance(data, bytes) else str(data)
    return None if text == _RETRY else text
