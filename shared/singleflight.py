"""Single-flight within one process: concurrent callers with the same key share one call.

Modelled on Go's ``golang.org/x/sync/singleflight``, for a caller that sees a call's start and
its end in separate hooks (as the gate and every framework adapter do) rather than wrapping the
call in a function:

* ``FlightTable.claim(key)`` returns the *leader's* :class:`Flight` for a key nobody is calling,
  or a *follower's* view of the flight in progress (Go's ``Do``, split in two);
* the leader settles the flight with :meth:`Flight.resolve` or :meth:`Flight.reject`; every
  follower gets that value or that exception from :meth:`Flight.result` (threads) or
  :meth:`Flight.wait` (asyncio tasks), threads and event loops mixed freely;
* ``FlightTable.forget(key)`` makes later callers start a new flight (Go's ``Forget``);
  ``FlightTable.followers(key)`` says how many joined the flight in progress (Go's ``shared``).

Guarantees: at most one leader per key at a time; a follower never waits on a flight that was
rejected (a failed flight is not joinable: the next caller leads a new one); cancelling one
waiter never cancels the others or the call. Across processes, the gate adds
:mod:`thrifty.flights` on top: the first caller in each process asks there who leads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


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

    def failed(self) -> bool:
        return self.future.done() and self.future.exception() is not None


def _copy(source: Future[T] | asyncio.Future[T], target: asyncio.Future[T]) -> None:
    error = source.exception()  # read even when nobody is left to tell: it was seen, not lost
    if target.done():
        return
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
    """Flights by key. Threads and asyncio tasks may share one table.

    One lock, the table's, guards the table and every follower count: ``claim``, ``forget``,
    ``followers``, ``snapshot`` and a leader's release all take it, and nothing else reads or
    writes either.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, tuple[Flight[T], int]] = {}  # key -> (leader's flight, followers)

    def claim(self, key: Hashable) -> Flight[T]:
        """The leader's flight for a new key, or a follower's view of the one in flight."""
        with self._lock:
            current = self._flights.get(key)
            if current is not None and not current[0]._outcome.failed():
                leading, followers = current
                self._flights[key] = (leading, followers + 1)
                return Flight(key, leader=False, outcome=leading._outcome, done=lambda: None)
            leader: Flight[T] = Flight(key, leader=True, outcome=_Outcome(), done=lambda: self._end(key, leader))
            self._flights[key] = (leader, 0)
            return leader

    def join(self, key: Hashable) -> Flight[T] | None:
        """A follower's view of the flight in progress for ``key``, or None when there is none:
        unlike :meth:`claim`, never leads one (a caller that will not make the call itself now)."""
        with self._lock:
            current = self._flights.get(key)
            if current is None or current[0]._outcome.failed():
                return None
            leading, followers = current
            self._flights[key] = (leading, followers + 1)
            return Flight(key, leader=False, outcome=leading._outcome, done=lambda: None)

    def followers(self, key: Hashable) -> int:
        """How many callers joined the flight in progress for ``key`` (0 when there is none)."""
        with self._lock:
            current = self._flights.get(key)
            return current[1] if current is not None else 0

    def snapshot(self) -> dict[Hashable, int]:
        """The keys in flight, with how many callers joined each."""
        with self._lock:
            return {key: followers for key, (_, followers) in self._flights.items()}

    def forget(self, key: Hashable) -> None:
        """Later callers of ``key`` start a new flight; the one in progress goes on for its own."""
        with self._lock:
            self._flights.pop(key, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def _end(self, key: Hashable, flight: Flight[T]) -> None:
        with self._lock:
            current = self._flights.get(key)
            if current is not None and current[0] is flight:
                del self._flights[key]
