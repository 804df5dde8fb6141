"""Which process makes a call that callers in several processes want: the cross-process half of
single-flight.

Within a process the gate joins callers through a :class:`~thrifty.singleflight.FlightTable`.
The one caller per process that leads a key then asks the process's :class:`Flights` for the
key's *lease*:

* :meth:`Flights.acquire` grants the lease (this process makes the call) or returns None
  (another process holds it);
* a process without the lease :meth:`Flights.follow` s the holder until a deadline, and gets its
  answer, its deterministic error, a lease to take over (the holder died, hung, or gave up), or
  nothing (the deadline passed, or the backend is unreachable: call upstream yourself);
* the holder :meth:`Flights.finish` es with the outcome: a :class:`~thrifty.completion.Completion`,
  an error every follower should get, or None (one of the followers retries).

:class:`LocalFlights` is the single-process implementation: every lease is granted at once, and
there is nobody to tell. :class:`~thrifty.redis_flight.RedisFlights` shares leases and outcomes
through Redis (``dedup.backend: redis``). The gate talks to either through this interface only.
Every method has an async twin that never blocks the event loop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from .completion import Completion
from .settings import ThriftySettings

Outcome = Completion | BaseException | None


@dataclass(frozen=True)
class Lease:
    """Leadership of one key. A ``local`` lease was granted without a shared backend (there is
    none, or it is unreachable): finishing it tells nobody."""

    key: str
    token: str
    local: bool = False


def local_lease(key: str) -> Lease:
    """A lease for a process that makes the call on its own."""
    return Lease(key, uuid.uuid4().hex, local=True)


@dataclass(frozen=True)
class Waited:
    """What a follower got from the key's holder: its ``completion`` (``answer``), its ``error``
    (``error``), a ``lease`` to take over (``takeover``), or nothing (``timeout``)."""

    outcome: Literal["answer", "error", "takeover", "timeout"]
    completion: Completion | None = None
    error: BaseException | None = None
    lease: Lease | None = None


class Flights(Protocol):
    """Leases and outcomes of calls across processes. Thread-safe."""

    def acquire(self, key: str) -> Lease | None:
        """The lease of ``key`` (renewed until finished), or None when another process holds it."""
        ...

    async def aacquire(self, key: str) -> Lease | None: ...

    def follow(self, key: str, deadline: float) -> Waited:
        """Wait for the holder of ``key`` until ``deadline`` (a ``time.time()``)."""
        ...

    async def afollow(self, key: str, deadline: float) -> Waited: ...

    def finish(self, lease: Lease, outcome: Outcome) -> None:
        """End the lease, handing ``outcome`` to the processes following it (None: one of them
        takes over and makes the call)."""
        ...

    async def afinish(self, lease: Lease, outcome: Outcome) -> None: ...

    def close(self) -> None: ...


class LocalFlights:
    """:class:`Flights` for one process: every lease is granted, nobody follows."""

    def acquire(self, key: str) -> Lease | None:
        return local_lease(key)

    async def aacquire(self, key: str) -> Lease | None:
        return local_lease(key)

    def follow(self, key: str, deadline: float) -> Waited:
        return Waited("timeout")  # never asked: every lease is granted

    async def afollow(self, key: str, deadline: float) -> Waited:
        return Waited("timeout")

    def finish(self, lease: Lease, outcome: Outcome) -> None:
        return None

    async def afinish(self, lease: Lease, outcome: Outcome) -> None:
        return None

    def close(self) -> None:
        return None


def make_flights(settings: ThriftySettings) -> Flights:
    """The flights ``settings.dedup.backend`` names (Redis needs the thrifty[redis] extra)."""
    if settings.dedup.enabled and settings.dedup.backend == "redis":
        from .redis_flight import RedisFlights

        return RedisFlights(settings.redis_url_for("dedup"), settings.redis, settings.dedup)
    return LocalFlights()
