"""In-process single-flight: one leader per key, followers in threads and event loops get its
outcome. No sleeps: the tests settle flights when they have seen the followers arrive."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import async_wait_for, wait_for
from thrifty.singleflight import FlightTable


def test_one_leader_and_its_followers() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    follower = table.claim("k")
    assert leader.leader and not follower.leader and table.followers("k") == 1
    with pytest.raises(RuntimeError):
        follower.resolve("not yours")
    leader.resolve("v")
    leader.reject(ValueError("ignored: already settled"))
    assert follower.result(1) == "v"
    assert table.claim("k").leader  # settled and released flights are gone


def test_a_resolved_flight_stays_joinable_until_released() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    leader.resolve("v", release=False)  # storing the answer elsewhere, say
    late = table.claim("k")
    assert not late.leader and late.result(0) == "v"
    leader.release()
    assert table.claim("k").leader


def test_a_rejected_flight_is_never_joined() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    follower = table.claim("k")
    leader.reject(ValueError("upstream said no"))
    with pytest.raises(ValueError):
        follower.result(1)
    assert table.claim("k").leader and table.in_flight() == 1


def test_a_thousand_tasks_wait_on_one_flight() -> None:
    table: FlightTable[str] = FlightTable()

    async def scenario() -> list[str]:
        leader = table.claim("k")
        waiters = [asyncio.create_task(table.claim("k").wait(timeout=60)) for _ in range(1000)]
        await async_wait_for(lambda: table.followers("k") == 1000)
        leader.resolve("v")
        return list(await asyncio.gather(*waiters))

    assert asyncio.run(scenario()) == ["v"] * 1000


def test_errors_reach_every_waiter() -> None:
    table: FlightTable[str] = FlightTable()

    async def scenario() -> list[BaseException | str]:
        leader = table.claim("k")
        waiters = [asyncio.create_task(table.claim("k").wait(timeout=60)) for _ in range(10)]
        leader.reject(KeyError("x"))  # before the waiters even started: they get it all the same
        return list(await asyncio.gather(*waiters, return_exceptions=True))

    assert all(isinstance(r, KeyError) for r in asyncio.run(scenario()))


def test_cancelling_one_waiter_leaves_the_others_waiting() -> None:
    table: FlightTable[str] = FlightTable()

    async def scenario() -> str:
        leader = table.claim("k")
        first = asyncio.create_task(table.claim("k").wait(timeout=60))
        second = asyncio.create_task(table.claim("k").wait(timeout=60))
        await async_wait_for(lambda: table.followers("k") == 2)
        first.cancel()
        leader.resolve("done")
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(scenario()) == "done"


def test_a_waiter_times_out_without_ending_the_flight() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    with pytest.raises(TimeoutError):
        asyncio.run(table.claim("k").wait(timeout=0.01))
    leader.resolve("v")
    assert table.claim("k").leader


def test_forget_lets_the_next_caller_start_a_new_flight() -> None:
    table: FlightTable[int] = FlightTable()
    first = table.claim("k")
    waiting = table.claim("k")
    table.forget("k")
    second = table.claim("k")
    assert second.leader
    first.resolve(1)
    second.resolve(2)
    assert waiting.result(1) == 1
    assert table.in_flight() == 0


def test_threads_and_event_loops_share_one_flight() -> None:
    table: FlightTable[str] = FlightTable()
    leader = table.claim("k")
    results: list[str] = []
    lock = threading.Lock()

    def in_a_thread() -> None:
        value = table.claim("k").result(60)
        with lock:
            results.append(value)

    def in_a_loop() -> None:
        value = asyncio.run(table.claim("k").wait(timeout=60))
        with lock:
            results.append(value)

    threads = [threading.Thread(target=in_a_thread) for _ in range(10)]
    threads += [threading.Thread(target=in_a_loop) for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: table.followers("k") == 15)
    leader.resolve("v")
    for t in threads:
        t.join()
    assert results == ["v"] * 15
