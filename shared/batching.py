"""Micro-batching for async callers of a blocking batch function (the embedder).

One background thread runs the function; the requests that arrive while it is busy are run
together in its next call. Under load this turns many one-text model runs - each paying the
model's fixed cost, a thread hop and GIL contention - into a few batched ones; alone, a request
runs at once, as it would in its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_Job = tuple[list[T], "asyncio.Future[list[R]]", asyncio.AbstractEventLoop]


class MicroBatcher(Generic[T, R]):
    """Runs ``compute`` (items in, one result per item out, in order) on one thread of its own,
    batching the items of concurrent :meth:`run` calls, up to ``max_batch`` items per call.

    An exception from ``compute`` reaches every caller whose items were in that call. A caller
    that is cancelled simply does not get its result. Callers may come from any event loop.
    """

    def __init__(self, compute: Callable[[list[T]], Sequence[R]], *, max_batch: int = 64,
                 name: str = "thrifty-batcher") -> None:
        self._compute = compute
        self.max_batch = max_batch
        self._name = name
        self._queue: queue.SimpleQueue[_Job[T, R]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.calls = 0  # calls made to compute, for tests and stats

    async def run(self, items: Sequence[T]) -> list[R]:
        """``compute(items)``, possibly computed together with other callers' items."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        self._queue.put((list(items), future, loop))
        self._ensure_thread()
        return await future

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            jobs = [self._queue.get()]
            size = len(jobs[0][0])
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                size += len(job[0])
            jobs = [job for job in jobs if not job[1].cancelled()]
            if not jobs:
                continue
            items = [item for job in jobs for item in job[0]]
            results: Sequence[R] | None = None
            error: BaseException | None = None
            try:
                self.calls += 1
                results = self._compute(items)
                if len(results) != len(items):
                    raise RuntimeError(f"compute returned {len(results)} results for {len(items)} items")
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                error = exc
            offset = 0
            for job_items, future, loop in jobs:
                part = list(results[offset:offset + len(job_items)]) if error is None and results is not None else []
                offset += len(job_items)
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, future, part, error)


def _settle(future: asyncio.Future[list[R]], result: list[R], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
