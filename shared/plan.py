"""Sans-I/O plans: a policy written once as a generator, run by a blocking or an asyncio driver.

A plan yields *operations* (small frozen dataclasses naming what it needs: an embedding, a store
lookup, a wait) and receives their results; it does no I/O itself. :func:`run` performs each
operation with a blocking function, :func:`arun` with a coroutine function. What to ask next and
what a result means is written once, in the plan; the sync and async twins of an API differ only
in their ``perform`` function.

One error policy everywhere: an exception raised while performing an operation is thrown into
the plan at the ``yield`` that asked for it, so the plan decides - catch it, clean up, or let it
go. Whatever the plan does not catch propagates out of :func:`run` / :func:`arun` unchanged. A
component that must fail open (the cache) does so at its public boundary, not in the driver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")
Plan = Generator[Any, Any, R]


def run(plan: Plan[R], perform: Callable[[Any], Any]) -> R:
    """Drive ``plan`` to its end, performing each operation with ``perform``; its return value."""
    try:
        op = next(plan)
        while True:
            try:
                result = perform(op)
            except BaseException as exc:  # noqa: BLE001 - the plan decides what it means
                op = plan.throw(exc)
            else:
                op = plan.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(plan: Plan[R], perform: Callable[[Any], Awaitable[Any]]) -> R:
    """Async twin of :func:`run`: ``perform`` is awaited, so the event loop is never blocked by
    the plan's operations."""
    try:
        op = next(plan)
        while True:
            try:
                result = await perform(op)
            except BaseException as exc:  # noqa: BLE001 - the plan decides what it means
                op = plan.throw(exc)
            else:
                op = plan.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
