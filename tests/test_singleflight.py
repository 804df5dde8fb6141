"""Single-flight primitives: Go's singleflight semantics, for threads and for asyncio."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from thrifty.singleflight import AsyncSingleFlight, FlightTable, SingleFlight


def test_async_do_runs_once_for_concurrent_callers() -> None:
    flight: AsyncSingleFlight[str] = AsyncSingleFlight()
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "v"

    async def scenario() -> list[bool]:
        results = await asyncio.gather(*(flight.do("k", fn) for _ in range(1000)))
        assert {r.value for r in results} == {"v"}
        return [r.shared for r in results]

    shared = asyncio.run(scenario())
    assert calls == 1 and all(shared)
    assert flight.in_flight() == 0


def test_async_errors_reach_every_caller_and_later_callers_start_afresh() -> None:
    flight: AsyncSingleFlight[str] = AsyncSingleFlight()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ValueError("upstream said no")

    async def scenario() -> None:
        results = await asyncio.gather(*(flight.do("k", failing) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert calls == 1
        with pytest.raises(ValueError):
            await flight.do("k", failing)
        assert calls == 2

    asyncio.run(scenario())


def test_a_lone_caller_is_not_shared_and_keys_are_independent() -> None:
    flight: AsyncSingleFlight[int] = AsyncSingleFlight()

    async def value(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async def scenario() -> None:
        a, b = await asyncio.gather(flight.do("a", lambda: value(1)), flight.do("b", lambda: value(2)))
        assert (a.value, a.shared, b.value, b.shared) == (1, False, 2, False)

    asyncio.run(scenario())


def test_cancelling_the_first_caller_does_not_strand_the_others() -> None:
    flight: AsyncSingleFlight[str] = AsyncSingleFlight()

    async def slow() -> str:
        await asyncio.sleep(0.1)
        return "done"

    async def scenario() -> None:
        leader = asyncio.create_task(flight.do("k", slow))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(flight.do("k", slow))
        await asyncio.sleep(0.01)
        leader.cancel()
        assert (await follower).value == "done"

    asyncio.run(scenario())


def test_forget_lets_the_next_caller_start_a_new_call() -> None:
    flight: AsyncSingleFlight[int] = AsyncSingleFlight()
    calls = 0

    async def fn() -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await asyncio.sleep(0.05)
        return mine

    async def scenario() -> None:
        first = asyncio.create_task(flight.do("k", fn))
        await asyncio.sleep(0.01)
        flight.forget("k")
        second = await flight.do("k", fn)
        assert (await first).value == 1 and second.value == 2 and calls == 2

    asyncio.run(scenario())


def test_do_future_is_dochan() -> None:
    flight: AsyncSingleFlight[str] = AsyncSingleFlight()

    async def fn() -> str:
        await asyncio.sleep(0.01)
        return "v"

    async def scenario() -> None:
        first, second = flight.do_future("k", fn), flight.do_future("k", fn)
        assert await first == "v" and await second == "v"

    asyncio.run(scenario())


def test_threads_share_one_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    calls = 0
    gate = threading.Barrier(20)
    lock = threading.Lock()

    def fn() -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.1)
        return "v"

    results: list[tuple[str, bool]] = []

    def worker() -> None:
        gate.wait()
        r = flight.do("k", fn)
        with lock:
            results.append((r.value, r.shared))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1 and results == [("v", True)] * 20


def test_thread_errors_are_shared_and_do_future_runs_in_the_background() -> None:
    flight: SingleFlight[str] = SingleFlight()

    def fail() -> str:
        time.sleep(0.05)
        raise KeyError("x")

    future = flight.do_future("k", fail)
    with pytest.raises(KeyError):
        flight.do("k", fail)
    with pytest.raises(KeyError):
        future.result(1)


def test_claims_for_hook_based_callers() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    follower = table.claim("k")
    assert leader.leader and not follower.leader and leader.followers == 1
    with pytest.raises(RuntimeError):
        follower.resolve("not yours")
    leader.resolve("v")
    leader.reject(ValueError("ignored: already settled"))
    assert follower.result(1) == "v"
    assert table.claim("k").leader  # settled flights are gone
    waiting = table.claim("w")
    follower_w = table.claim("w")
    with pytest.raises(TimeoutError):
        asyncio.run(follower_w.wait(timeout=0.01))
    waiting.reject(ValueError("no"))
    with pytest.raises(ValueError):
        asyncio.run(follower_w.wait(timeout=1))
