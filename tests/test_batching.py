"""MicroBatcher: concurrent callers share runs of the blocking function, and each gets exactly the
results of its own items."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from thrifty.batching import MicroBatcher


class Slow:
    """A batch function that records the batches it was given. Its first run holds until
    :meth:`let_go` (so that callers can queue up behind it, whatever the machine's speed);
    later runs take ``seconds``."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.released = threading.Event()

    async def busy(self) -> None:
        """Wait until the first run is under way."""
        await asyncio.to_thread(self.started.wait, 10)

    def let_go(self) -> None:
        self.released.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if not self.started.is_set():
            self.started.set()
            self.released.wait(10)
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot compute {self.fail_on}")
        return [f"result of {item}" for item in items]


def test_callers_arriving_while_it_is_busy_share_one_run_and_get_their_own_results() -> None:
    compute = Slow()
    batcher = MicroBatcher(compute)

    async def burst() -> list[list[str]]:
        first = asyncio.create_task(batcher.run(["a0"]))
        await compute.busy()
        rest = [asyncio.create_task(batcher.run([f"b{i}", f"c{i}"])) for i in range(6)]
        await asyncio.sleep(0)  # they queue up behind the first run
        compute.let_go()
        return [await first, *await asyncio.gather(*rest)]

    results = asyncio.run(burst())
    assert results[0] == ["result of a0"]
    assert results[1:] == [[f"result of b{i}", f"result of c{i}"] for i in range(6)]
    assert len(compute.batches) == 2 and len(compute.batches[1]) == 12


def test_batches_are_capped() -> None:
    compute = Slow()
    batcher = MicroBatcher(compute, max_batch=4)

    async def burst() -> list[list[str]]:
        first = asyncio.create_task(batcher.run(["first"]))
        await compute.busy()
        rest = [asyncio.create_task(batcher.run([str(i)])) for i in range(10)]
        await asyncio.sleep(0)
        compute.let_go()
        await first
        return list(await asyncio.gather(*rest))

    assert asyncio.run(burst()) == [[f"result of {i}"] for i in range(10)]
    assert [len(batch) for batch in compute.batches] == [1, 4, 4, 2]


def test_an_error_reaches_the_callers_of_that_run_only() -> None:
    compute = Slow(fail_on="bad")
    batcher = MicroBatcher(compute)

    async def scenario() -> tuple[list[object], list[str]]:
        first = asyncio.create_task(batcher.run(["warm"]))
        await compute.busy()
        pending = asyncio.gather(batcher.run(["bad"]), batcher.run(["good"]), return_exceptions=True)
        await asyncio.sleep(0)
        compute.let_go()
        together = await pending
        await first
        return list(together), await batcher.run(["later"])

    together, later = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in together)  # "good" shared the failing run
    assert later == ["result of later"]


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    compute = Slow()
    batcher = MicroBatcher(compute)

    async def scenario() -> list[str]:
        first = asyncio.create_task(batcher.run(["first"]))
        await compute.busy()
        doomed = asyncio.create_task(batcher.run(["doomed"]))
        kept = asyncio.create_task(batcher.run(["kept"]))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        compute.let_go()
        await first
        return await kept

    assert asyncio.run(scenario()) == ["result of kept"]
    assert compute.batches == [["first"], ["kept"]]  # the cancelled caller's item was never computed


def test_callers_on_different_event_loops() -> None:
    compute = Slow(seconds=0.05)
    compute.let_go()  # no holding: callers simply come from four threads at once
    batcher = MicroBatcher(compute)
    results: dict[int, list[str]] = {}

    def caller(n: int) -> None:
        results[n] = asyncio.run(batcher.run([f"loop {n}"]))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {n: [f"result of loop {n}"] for n in range(4)}


def test_a_wrong_number_of_results_is_an_error_not_a_shifted_answer() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        asyncio.run(batcher.run(["a", "b", "c"]))
