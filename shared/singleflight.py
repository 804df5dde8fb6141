"""Single-flight: concurrent callers with the same key share one execution.

Modelled on Go's ``golang.org/x/sync/singleflight``:

* ``do(key, fn)`` runs ``fn`` once for all callers of ``key`` that arrive while it runs; each gets
  the same result (or the same exception) and a ``shared`` flag that is True when the result went
  to more than one caller;
* ``do_future(key, fn)`` is ``DoChan``: the same, as a future to wait on later;
* ``forget(key)`` makes later callers of ``key`` start a new execution instead of joining the one
  in flight.

:class:`SingleFlight` serves threads (``fn`` runs in the first caller's thread);
:class:`AsyncSingleFlight` serves asyncio tasks (``fn`` runs in a task of its own, so a cancelled
caller - the first one included - never cancels the call the others are waiting for).

Both also expose the call as a :class:`Flight` claim, for frameworks that cannot wrap the call in
a function but see its start and its end through separate hooks: ``claim(key)`` returns a
leader's flight (resolve or reject it when the call ends) or a follower's (wait on it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shared(Generic[T]):
    """A result and whether it was shared with other callers (Go's ``shared``)."""

    value: T
    shared: bool


class _Outcome(Generic[T]):
    """A flight's eventual result, waitable from threads and from any number of event loops.

    Threads block on a ``concurrent.futures.Future``. Each event loop gets one asyncio future fed
    from it by a single thread-safe callback, and each waiting task a small future of its own fed
    from that one: waking a thousand waiters costs one cross-thread wake-up, not a thousand, and
    cancelling one waiter never cancels the others' result.
    """

    def __init__(self) -> None:
        self.future: Future[T] = Future()
        self._loops: dict[int, asyncio.Future[T]] = {}
        self._lock = threading.Lock()

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
        with self._lock:
            shared = self._loops.get(id(loop))
            if shared is not None:
                return shared
            shared = self._loops[id(loop)] = loop.create_future()
        target = shared

        def relay(done: Future[T]) -> None:  # in whichever thread settles the flight
            loop.call_soon_threadsafe(_copy, done, target)

        self.future.add_done_callback(relay)
        return shared


def _copy(source: Future[T] | asyncio.Future[T], target: asyncio.Future[T]) -> None:
    if target.done():
        return
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class Flight(Generic[T]):
    """One call in flight, seen by its leader or by one of its followers.

    The leader settles it with :meth:`resolve` or :meth:`reject`; only the first settlement takes
    effect, so a leader's failure path may call :meth:`reject` unconditionally. Followers wait
    with :meth:`result` (threads) or :meth:`wait` (asyncio). A resolved flight stays joinable until
    its leader calls :meth:`release` (after storing the result elsewhere, say), so that callers
    arriving in between get the result instead of starting a new call.
    """

    def __init__(self, key: Hashable, leader: bool, outcome: _Outcome[T], done: Callable[[], None]) -> None:
        self.key = key
        self.leader = leader
        self.followers = 0  # on the leader's flight: how many joined
        self._outcome = outcome
        self._done = done
        self._lock = threading.Lock()

    @property
    def settled(self) -> bool:
        return self._outcome.future.done()

    def resolve(self, value: T, *, release: bool = True) -> None:
        """Hand ``value`` to every follower; ``release=False`` keeps the flight joinable until
        :meth:`release`."""
        if self._settle():
            self._outcome.future.set_result(value)
        if release:
            self.release()

    def reject(self, error: BaseException) -> None:
        """Hand ``error`` to every follower and end the flight."""
        if self._settle():
            self._outcome.future.set_exception(error)
        self.release()

    def release(self) -> None:
        """End the flight: later callers start a new one (the leader only; idempotent)."""
        if self.leader:
            self._done()

    def result(self, timeout: float | None = None) -> T:
        """Block until the leader settles the flight; raise its exception, or TimeoutError."""
        return self._outcome.future.result(timeout)

    async def wait(self, timeout: float | None = None) -> T:
        """Await the leader's outcome without blocking the event loop (TimeoutError after
        ``timeout`` seconds; cancelling the waiter does not cancel the call)."""
        loop = asyncio.get_running_loop()
        shared = self._outcome.for_loop(loop)
        if not shared.done():
            mine: asyncio.Future[T] = loop.create_future()
            shared.add_done_callback(lambda done: _copy(done, mine))
            async with asyncio.timeout(timeout):
                return await mine
        return shared.result()

    def _settle(self) -> bool:
        if not self.leader:
            raise RuntimeError("only the leader of a flight settles it")
        with self._lock:
            future = self._outcome.future
            return not future.done() and future.set_running_or_notify_cancel()


class FlightTable(Generic[T]):
    """Flights by key: the part of the design both variants share, usable on its own by callers
    that see a call's start and end in separate hooks (``claim`` / ``resolve`` / ``reject``).
    Threads and asyncio tasks may share one table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Flight[T]] = {}

    def claim(self, key: Hashable) -> Flight[T]:
        """The leader's flight for a new key, or a follower's view of the one in flight."""
        with self._lock:
            current = self._flights.get(key)
            joinable = current is not None and (not current.settled or current._outcome.future.exception() is None)
            if current is not None and joinable:
                current.followers += 1
                return Flight(key, leader=False, outcome=current._outcome, done=lambda: None)
            leader: Flight[T] = Flight(key, leader=True, outcome=_Outcome(), done=lambda: self._end(key, leader))
            self._flights[key] = leader
            return leader

    def shared(self, flight: Flight[T]) -> bool:
        """Go's ``shared``: a follower's result is always shared; a leader's when anyone joined."""
        with self._lock:
            return flight.followers > 0 or not flight.leader

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._flights.pop(key, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def _end(self, key: Hashable, flight: Flight[T]) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]


class SingleFlight(FlightTable[T]):
    """Single-flight for threads."""

    def do(self, key: Hashable, fn: Callable[[], T]) -> Shared[T]:
        """Run ``fn`` once for every concurrent caller of ``key``; raise its exception for all."""
        flight = self.claim(key)
        if flight.leader:
            try:
                flight.resolve(fn())
            except BaseException as exc:  # noqa: BLE001 - every outcome goes to the waiters
                flight.reject(exc)
        value = flight.result()
        return Shared(value, self.shared(flight))

    def do_future(self, key: Hashable, fn: Callable[[], T]) -> Future[T]:
        """``DoChan``: like :meth:`do`, but returns at once; the leader's ``fn`` runs in a thread."""
        flight = self.claim(key)
        if flight.leader:
            def run() -> None:
                try:
                    flight.resolve(fn())
                except BaseException as exc:  # noqa: BLE001 - every outcome goes to the waiters
                    flight.reject(exc)

            threading.Thread(target=run, name=f"singleflight-{key!r}", daemon=True).start()
        return flight._outcome.future


class AsyncSingleFlight(FlightTable[T]):
    """Single-flight for asyncio tasks."""

    def __init__(self) -> None:
        super().__init__()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> Shared[T]:
        """Await ``fn()`` once for every concurrent caller of ``key``; raise its exception for all.

        The call runs in a task of its own: cancelling any caller, the first one included,
        leaves the call running for the others.
        """
        flight = self.claim(key)
        if flight.leader:
            self._start(flight, fn)
        value = await flight.wait()
        return Shared(value, self.shared(flight))

    def do_future(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """``DoChan``: the flight's outcome as an asyncio future, the call started if new."""
        flight = self.claim(key)
        if flight.leader:
            self._start(flight, fn)
        return asyncio.ensure_future(flight.wait())

    def _start(self, flight: Flight[T], fn: Callable[[], Awaitable[T]]) -> None:
        async def run() -> None:
            try:
                flight.resolve(await fn())
            except BaseException as exc:
                flight.reject(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)  # a strong reference until it ends
        task.add_done_callback(self._tasks.discard)
