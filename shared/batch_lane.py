"""The batch lane: requests that can wait, answered through the provider's batch API at its batch
price, and never lost.

    lane = BatchLane(gate, provider)          # provider: a BatchProvider (the LiteLLM adapter's)
    async with lane:                          # resume() what a previous process left, then flush
        deferred = await lane.defer(request)  # by count and age, and poll, in the background
        delivered = await deferred            # Delivered(request_id, answer, source)

What :meth:`BatchLane.defer` does with a request, in order:

1. the gate decides (:meth:`thrifty.Thrifty.adefer`): a stored answer, or the answer of an
   identical call in flight in this process, answers it at once - no batch;
2. otherwise it is routed and its worst case reserved at the *batch* price, and it is written to
   the durable queue (:mod:`thrifty.batch_queue`) before ``defer`` returns;
3. queued requests are sent when ``batch.max_batch_size`` are waiting, when the oldest has waited
   ``batch.max_wait_seconds``, or on :meth:`BatchLane.flush`: one input file, one provider batch;
   identical requests (the same exact key, of one tenant, joinable as the gate judges) share one
   line of it;
4. batches in progress are looked at every ``batch.poll_seconds`` (or on :meth:`BatchLane.poll`);
   when one completes, every answer is written to the queue, then delivered: the call is priced
   at the batch price, settled against the budgets and recorded in the ledger (``detail``:
   ``batch``), the answer stored in the cache, the request marked delivered and its future
   resolved. A request that shared another's line is recorded as joined. A line the provider
   answered with an error fails its request (:class:`BatchLineFailed`); a batch that failed,
   expired or was cancelled sends its requests again at once, up to ``batch.max_attempts`` times.

What a crash costs - the process may die at any instant:

* nothing is lost: a request is in the queue before ``defer`` returns, and every later step is a
  transaction of the queue; :meth:`BatchLane.resume` (run by ``start``) picks up every request
  that is queued, in a batch being built or uploaded, submitted, or answered and not delivered;
* nothing is sent twice: a batch is recorded ``uploaded`` before it is created at the provider,
  and created with its local id in the provider's metadata, so after a crash between the two
  :meth:`BatchProvider.find` finds it instead of creating another; a request is sent again only
  when its batch failed, expired or was cancelled;
* nothing is delivered twice: a request is marked delivered in the same step that resolves it;
  a restarted process hands out delivered answers by request id (:meth:`BatchLane.result`). The
  one window left: a crash between the ledger's write and the queue's mark records the call
  twice in the ledger (never billed twice by the provider, never stored twice in the cache).

Not done: joining an identical call in flight in *another* process (``dedup.backend: redis``):
a deferred request joins only this process's calls; a deferred request does not lead a flight
(its answer may take hours). Reservations in Redis lapse after ``budget.reservation_ttl`` while a
batch runs; the spend is counted when it settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .batch_queue import BatchQueue, QueuedBatch, QueuedRequest
from .budget import BudgetExceeded
from .completion import Completion
from .request import canonicalize
from .settings import BatchSettings
from .ticket import Ticket

if TYPE_CHECKING:
    from .gate import Thrifty

log = logging.getLogger("thrifty.batch")

# The points a test may stop a lane at (on_stage): after a request is queued; after the input
# file is uploaded, before that is recorded; after the provider created the batch, before that is
# recorded; after a batch's answers are recorded, before any is delivered.
STAGES = ("queued", "uploaded", "created", "answered")
_ENDED_BADLY = ("failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchLine:
    """One line of a batch input file: ``request`` (as the queue keeps it) on ``model``."""

    custom_id: str
    request: Mapping[str, Any]
    model: str | None


@dataclass(frozen=True)
class ProviderBatch:
    """A batch as the provider reports it: its status (``validating``, ``in_progress``,
    ``finalizing``, ``completed``, ``failed``, ``expired``, ``cancelling``, ``cancelled``) and, once
    completed, its output and error files."""

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class LineResult:
    """One line of a batch's output or error file."""

    custom_id: str
    status_code: int
    body: Mapping[str, Any] | None
    error: str | None = None


class BatchProvider(Protocol):
    """A provider's files and batches API, as the lane uses it (the LiteLLM adapter implements
    it with ``acreate_file``, ``acreate_batch``, ``aretrieve_batch``, ``alist_batches`` and
    ``afile_content``). Errors are raised; the lane retries at its next flush or poll."""

    async def upload(self, lines: Sequence[BatchLine]) -> str:
        """Upload an input file of ``lines``; its file id."""
        ...

    async def create(self, file_id: str, *, tag: str, completion_window: str) -> str:
        """Create a batch of the file, carrying ``tag`` in its metadata; the batch's id."""
        ...

    async def find(self, tag: str) -> str | None:
        """The id of a batch created with ``tag``, if the provider has one (asked only when
        recovering a batch a crash may have created without recording it)."""
        ...

    async def retrieve(self, batch_id: str) -> ProviderBatch: ...

    async def results(self, file_id: str) -> list[LineResult]:
        """The lines of an output or error file."""
        ...

    def completion(self, body: Mapping[str, Any]) -> Completion:
        """A line's response body (a chat.completion) as a :class:`~thrifty.completion.Completion`."""
        ...


@dataclass(frozen=True)
class Delivered:
    """A deferred request's answer. ``source``: ``batch`` (its own batch line), ``lane_joined``
    (an identical request's line), or how the gate answered it without a batch (``exact``,
    ``semantic``, ``joined``). ``answer`` is a chat.completion dict (or what the cache kept)."""

    request_id: str
    answer: Mapping[str, Any]
    source: str


class BatchLineFailed(RuntimeError):
    """The provider answered the request's batch line with an error, or its batches kept
    failing; ``status_code`` is the line's HTTP status when it had one."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class Deferred(asyncio.Future):  # type: ignore[type-arg]
    """The future of one deferred request; ``request_id`` names it in the queue (for
    :meth:`BatchLane.result` after a restart). Resolves to :class:`Delivered`."""

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id


Stage = Callable[[str, str], Awaitable[None]]


class BatchLane:
    """The batch lane of one gate (see the module docstring). Use it from one event loop; the
    queue's writes (a few SQLite statements each) run on it.

    Args:
        gate: the :class:`~thrifty.Thrifty` whose cache, flights, router, budgets and ledger apply.
        provider: the provider's batch API.
        settings: default ``gate.settings.batch``.
        queue: the durable queue, or the path of its file; default a
            :class:`~thrifty.batch_queue.BatchQueue` at ``settings.path``.
        on_stage: awaited with (stage, request or batch id) at each of :data:`STAGES` (tests).
    """

    def __init__(self, gate: Thrifty, provider: BatchProvider, settings: BatchSettings | None = None, *,
                 queue: BatchQueue | str | Path | None = None, on_stage: Stage | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.gate = gate
        self.provider = provider
        self.settings = settings or gate.settings.batch
        if not isinstance(queue, BatchQueue):
            queue = BatchQueue(self.settings.path if queue is None else queue, clock=clock)
        self.queue = queue
        self.clock = clock
        self._on_stage = on_stage
        self._tickets: dict[str, Ticket] = {}  # this process's open tickets, by request id
        self._waiting: dict[str, list[asyncio.Future[Delivered]]] = {}
        self._work = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ deferring
    async def defer(self, request: Mapping[str, Any]) -> Deferred:
        """Defer ``request`` (a chat request in the OpenAI wire format); returns its future at
        once. Answered now when the gate can (cache, identical call in flight), else durably
        queued before this returns.

        Raises:
            BudgetExceeded: a budget refuses the call even at the batch price.
        """
        decision = await self.gate.adefer(request)
        if not isinstance(decision, Ticket):
            canon = canonicalize(request, self.gate.settings)
            request_id = self.queue.add_delivered(request, decision.answer, source=decision.source,
                                                  scope=canon.scope, exact_key=canon.exact_key)
            future = Deferred(request_id)
            future.set_result(Delivered(request_id, decision.answer, decision.source))
            return future
        try:
            request_id = self._queue(decision)
        except BaseException:
            decision.abandon()  # not queued: nothing reserved stays reserved
            raise
        future = Deferred(request_id)
        self._waiting.setdefault(request_id, []).append(future)
        await self._stage("queued", request_id)
        if self.queue.count_unbatched() >= self.settings.max_batch_size:
            self._wake.set()
        return future

    def _queue(self, ticket: Ticket, request_id: str | None = None) -> str:
        canon = ticket.canonical
        held = ticket.reservation if ticket.reservation is not None and ticket.reservation.charges else None
        tier = ticket.route.tier.name if ticket.route.tier is not None else None
        fields: dict[str, Any] = {"reservation_id": held.id if held else None, "reserved": held.amount if held else 0.0,
                                  "model": ticket.model, "tier": tier}
        if request_id is None:
            request_id = self.queue.add(ticket.request, scope=canon.scope, exact_key=canon.exact_key,
                                        joinable=self.gate.why_alone(canon, ticket.request) is None, **fields)
        else:
            self.queue.requeue(request_id, **fields)
        self._tickets[request_id] = ticket
        return request_id

    async def result(self, request_id: str) -> Delivered:
        """The answer of the deferred request ``request_id``, waiting for it if it is not
        delivered yet (from this process or one before it).

        Raises:
            KeyError: no such request (or its record expired).
            BatchLineFailed: it failed.
        """
        row = self.queue.get(request_id)
        if row is None:
            raise KeyError(request_id)
        if row.state == "delivered" and row.answer is not None:
            return Delivered(row.id, row.answer, row.source or "batch")
        if row.state == "failed":
            raise BatchLineFailed(row.error or "failed")
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(request_id, []).append(future)
        return await future

    # ------------------------------------------------------------------ sending
    async def flush(self) -> int:
        """Send every queued request now (in batches of at most ``batch.max_batch_size``), after
        finishing any batch a crash left half sent. Returns how many requests were sent."""
        async with self._work:
            return await self._flush()

    async def _flush(self) -> int:
        await self._finish_half_sent()
        sent = 0
        while rows := self.queue.unbatched(self.settings.max_batch_size):
            await self._send(rows)
            sent += len(rows)
        return sent

    async def _finish_half_sent(self) -> None:
        for batch in self.queue.batches("building"):  # left by a crash: its file may be up, unused
            self.queue.unbuild(batch.id)
        for batch in self.queue.batches("uploaded"):  # left by a crash or a failed create
            await self._create(batch, recovering=True)

    async def _send(self, rows: Sequence[QueuedRequest]) -> None:
        lines: dict[str, str] = {}
        leaders: dict[str, str] = {}
        for row in rows:
            leader = leaders.get(row.exact_key) if row.joinable else None
            lines[row.id] = leader or row.id
            if row.joinable and leader is None:
                leaders[row.exact_key] = row.id
        batch = self.queue.build(lines)
        try:
            file_id = await self.provider.upload(
                [BatchLine(row.id, row.request, row.model) for row in rows if lines[row.id] == row.id])
        except BaseException:
            self.queue.unbuild(batch.id)
            raise
        await self._stage("uploaded", batch.id)
        self.queue.uploaded(batch.id, file_id)
        await self._create(QueuedBatch(batch.id, "uploaded", file_id, None, batch.created_at), recovering=False)

    async def _create(self, batch: QueuedBatch, *, recovering: bool) -> None:
        """Create the provider's batch of an uploaded file - unless, ``recovering`` a batch an
        earlier attempt may have created without recording it, the provider has it already."""
        assert batch.file_id is not None
        provider_id = await self.provider.find(batch.id) if recovering else None
        if provider_id is None:
            provider_id = await self.provider.create(batch.file_id, tag=batch.id,
                                                     completion_window=self.settings.completion_window)
        await self._stage("created", batch.id)
        self.queue.submitted(batch.id, provider_id)

    # ------------------------------------------------------------------ receiving
    async def poll(self) -> int:
        """Look at every batch in progress once; record the answers of those that ended and
        deliver every answered request. Returns how many requests were delivered."""
        async with self._work:
            return await self._poll()

    async def _poll(self) -> int:
        resend = False
        for batch in self.queue.batches("submitted"):
            assert batch.provider_id is not None
            state = await self.provider.retrieve(batch.provider_id)
            if state.status == "completed":
                await self._record_results(batch, state)
            elif state.status in _ENDED_BADLY:
                log.warning("thrifty: batch %s %s; its requests are sent again", state.id, state.status)
                self.queue.ended(batch.id, requeue_error=f"the provider's batch {state.status}",
                                 max_attempts=self.settings.max_attempts)
                await self._stage("answered", batch.id)
                resend = True
        delivered = await self._deliver_answered()
        if resend:  # they have waited their turn already: sent again now, with whatever is queued
            await self._flush()
        return delivered

    async def _record_results(self, batch: QueuedBatch, state: ProviderBatch) -> None:
        found: dict[str, LineResult] = {}
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                found.update((r.custom_id, r) for r in await self.provider.results(file_id))
        results: dict[str, tuple[Mapping[str, Any] | None, str | None]] = {}
        for row in self.queue.requests("submitted", batch=batch.id):
            line = found.get(row.line or row.id)
            if line is None:
                results[row.id] = (None, "the provider's batch has no result for this request")
            elif line.status_code == 200 and line.body is not None:
                results[row.id] = (line.body, None)
            else:
                results[row.id] = (None, f"{line.status_code}: {line.error or line.body}")
        self.queue.answer(batch.id, results)
        await self._stage("answered", batch.id)

    async def _deliver_answered(self) -> int:
        delivered = 0
        for row in self.queue.requests("answered"):
            await self._deliver(row)
            delivered += 1
        return delivered

    async def _deliver(self, row: QueuedRequest) -> None:
        ticket = self._tickets.pop(row.id, None) or self._resumed(row)
        if row.error is not None or row.answer is None:
            error = BatchLineFailed(row.error or "no answer", _status(row.error))
            await ticket.afail(error)
            self.queue.delivered(row.id, "batch")
            self._resolve(row.id, error)
            return
        completion = self.provider.completion(row.answer)
        if row.line in (None, row.id):
            await ticket.acomplete(completion, rejected=ticket.validation_failure(completion))
            source = "batch"
        else:  # it shared an identical request's line: that request's call, joined
            ticket.abandon()  # no call of its own: what it reserved is freed
            self.gate.books.joined(ticket.canonical, self.gate.batch_books.price(completion, row.model))
            source = "lane_joined"
        self.queue.delivered(row.id, source)
        self._resolve(row.id, Delivered(row.id, row.answer, source))

    def _resolve(self, request_id: str, outcome: Delivered | BaseException) -> None:
        for future in self._waiting.pop(request_id, []):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _resumed(self, row: QueuedRequest) -> Ticket:
        """A ticket for ``row``'s call, whose own ticket died with an earlier process."""
        return self.gate.resumed(row.request, model=row.model, tier=row.tier, reservation_id=row.reservation_id,
                                 reserved=row.reserved, keys=(row.scope, row.exact_key))

    def _release(self, row: QueuedRequest) -> None:
        """Free the reservation an earlier process made for ``row`` (where it is still held)."""
        if row.reservation_id is not None:
            self._resumed(row).abandon()  # its reservation is set only where the budget is active

    # ------------------------------------------------------------------ after a restart
    async def resume(self) -> int:
        """Pick up what an earlier process left in the queue: queued requests are decided again
        (answered from the cache or a call in flight when they can be, else reserved and kept
        queued), half-sent batches are finished, batches in progress are looked at, answered
        requests delivered. Returns how many requests it picked up."""
        async with self._work:
            picked = 0
            for row in self.queue.requests("queued"):
                if row.id in self._tickets or row.batch is not None:
                    continue
                picked += 1
                self._release(row)
                try:
                    decision = await self.gate.adefer(row.request)
                except BudgetExceeded as refused:
                    self.queue.failed(row.id, str(refused))
                    self._resolve(row.id, refused)
                    continue
                if isinstance(decision, Ticket):
                    self._queue(decision, row.id)
                elif self.queue.resolved(row.id, decision.answer, decision.source):
                    self._resolve(row.id, Delivered(row.id, decision.answer, decision.source))
            picked += len(self.queue.requests("submitted", "answered"))
            picked += sum(len(self.queue.requests("queued", batch=b.id))
                          for b in self.queue.batches("building", "uploaded"))
            await self._finish_half_sent()
            await self._poll()
            self.queue.expire(self.settings.keep_delivered_seconds)
            return picked

    # ------------------------------------------------------------------ running in the background
    async def start(self) -> None:
        """:meth:`resume`, then flush and poll in the background as the settings say."""
        await self.resume()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="thrifty-batch-lane")

    async def stop(self) -> None:
        """Stop the background work (queued and submitted requests stay in the queue)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        self.queue.close()

    async def __aenter__(self) -> BatchLane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pending(self) -> dict[str, int]:
        """How many requests are in each state of the queue."""
        return self.queue.counts()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_look())
            self._wake.clear()
            try:
                if self._flush_due():
                    await self.flush()
                if self.queue.batches("submitted"):
                    await self.poll()
            except Exception as exc:  # noqa: BLE001 - the provider may be down: try again later
                log.warning("thrifty: the batch lane will try again: %r", exc)

    def _flush_due(self) -> bool:
        oldest = self.queue.oldest_unbatched()
        if oldest is None:
            return False
        return (self.clock() - oldest >= self.settings.max_wait_seconds
                or self.queue.count_unbatched() >= self.settings.max_batch_size)

    def _next_look(self) -> float:
        oldest = self.queue.oldest_unbatched()
        due = self.settings.poll_seconds
        if oldest is not None:
            due = min(due, max(0.0, oldest + self.settings.max_wait_seconds - self.clock()))
        return max(due, 0.001)

    async def _stage(self, stage: str, ident: str) -> None:
        if self._on_stage is not None:
            await self._on_stage(stage, ident)


def _status(error: str | None) -> int | None:
    head = (error or "").split(":", 1)[0]
    return int(head) if head.isdigit() else None
