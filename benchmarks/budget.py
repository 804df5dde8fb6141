"""Budgets under fire: can concurrent calls overspend a limit?

    thrifty bench budget [--calls 500] [--processes 4] [--redis-url URL]

1. In one process: ``--calls`` threads at once, each reserving the worst case of a call against
   a $0.50 tenant limit, "calling" for 5 ms and settling its real cost. Beside it, the same calls
   against the reference: a limit checked against the spend so far before each call and charged
   after it, with no reservation for calls in flight.
2. Across ``--processes`` processes sharing the limit in Redis (started by the benchmark unless
   ``--redis-url`` is given), ``--calls`` calls in all; ``--processes 0`` skips it.

Prints the calls let through and refused, the final spend against the limit, and one refusal.
Target (issue 5): the final spend never exceeds the limit, and refused calls get a clear error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from thrifty.budget import Budget, BudgetExceeded, BudgetStore, Reservation
from thrifty.pricing import PriceTable
from thrifty.request import CanonicalRequest, canonicalize
from thrifty.settings import BudgetSettings, LimitSettings, ModelPrice, RedisSettings

from benchmarks.summary_row import SummaryRow, Target, command, summary_argv

LIMIT = 0.50
COST = 0.003  # what each call really costs, settled after it
QUICK = ("--processes", "0")  # the summary's run: in one process (no Redis), full size
REQUEST = {"model": "big-model", "max_tokens": 100, "metadata": {"tenant": "acme"},
           "messages": [{"role": "user", "content": "What is the refund policy for online orders?"}]}


def budget(store: BudgetStore | None = None) -> Budget:
    prices = PriceTable({"big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
    return Budget(BudgetSettings(limits=[LimitSettings(scope="tenant", usd=LIMIT)]), prices, store=store)


class Limiter(Protocol):
    """What :func:`spend` calls: thrifty's :class:`Budget` or the reference."""

    def reserve(self, request: Mapping[str, Any], canon: CanonicalRequest, model: str | None) -> Reservation: ...

    def settle(self, reservation: Reservation, actual: float) -> None: ...


class CheckThenCharge:
    """The reference: a call goes through if the spend so far plus its worst case fits the limit,
    and is charged when it ends. Calls in flight are not counted (no reservation)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.spent = 0.0
        self._lock = threading.Lock()

    def reserve(self, request: Mapping[str, Any], canon: CanonicalRequest, model: str | None) -> Reservation:
        charge, cost = self.budget.charges(canon)[0], self.budget.worst_case(request, model) or 0.0
        with self._lock:
            if self.spent + cost > charge.limit:
                raise BudgetExceeded(charge, self.spent, 0.0, cost)
        return Reservation("unreserved", (charge,), cost, model)

    def settle(self, reservation: Reservation, actual: float) -> None:
        with self._lock:
            self.spent += actual


def spend(b: Limiter, calls: int, start: threading.Event | None = None) -> dict[str, Any]:
    canon = canonicalize(REQUEST)
    counts = {"ok": 0, "refused": 0}
    messages: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(calls)

    def one() -> None:
        barrier.wait()
        try:
            reservation = b.reserve(REQUEST, canon, "big-model")
        except BudgetExceeded as exc:
            with lock:
                counts["refused"] += 1
                messages.append(str(exc))
            return
        time.sleep(0.005)
        b.settle(reservation, COST)  # the real cost, below the reserved worst case
        with lock:
            counts["ok"] += 1

    if start is not None:
        start.wait()
    threads = [threading.Thread(target=one) for _ in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**counts, "messages": messages[:1]}


def worker(url: str, prefix: str, calls: int) -> None:
    import redis
    from thrifty.redis_budget import RedisBudgetStore

    client = redis.Redis.from_url(url)
    client.incr(f"{prefix}:ready")
    while not client.exists(f"{prefix}:go"):
        time.sleep(0.002)
    store = RedisBudgetStore(url, RedisSettings(key_prefix=prefix, operation_timeout=5))
    print(json.dumps(spend(budget(store), calls)))


def in_process(calls: int) -> dict[str, Any]:
    """``calls`` concurrent calls against thrifty's budget and against the reference, in one process:
    calls let through and refused, final spend, one refusal's message."""
    local = budget()
    result = spend(local, calls)
    spent, reserved = local.store.usage(local.charges(canonicalize(REQUEST))[0], time.time())
    reference = CheckThenCharge(budget())
    unreserved = spend(reference, calls)
    return {**result, "spent": spent, "reserved": reserved,
            "reference": {"ok": unreserved["ok"], "refused": unreserved["refused"], "spent": reference.spent}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--processes", type=int, default=4, help="processes sharing the limit on Redis (0 skips)")
    parser.add_argument("--redis-url")
    return parser


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """The headline figure, in one process: the final spend of ``--calls`` concurrent calls, beside
    the reference's. ``argv`` (default: :data:`QUICK`, whatever ``quick``: it is the full size)
    overrides the sizes; the Redis run is never part of the summary."""
    argv = summary_argv(argv, quick, QUICK, full=QUICK)
    args = _parser().parse_args(argv)
    result = in_process(args.calls)
    clear = bool(result["messages"]) and all("would be exceeded" in m for m in result["messages"])
    return [SummaryRow("budget", f"{args.calls} concurrent calls, ${LIMIT:.2f} limit: final spend",
                       result["spent"], "$", result["reference"]["spent"], "check-then-charge, no reservation",
                       Target("<=", LIMIT, "issue 5"), command("budget", argv),
                       f"{result['ok']} let through, {result['refused']} refused"
                       + (" with a clear error" if clear else ""))]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--worker"]:
        worker(args_list[1], args_list[2], int(args_list[3]))
        return 0
    args = _parser().parse_args(args_list)

    result = in_process(args.calls)
    reference = result["reference"]
    print(f"one process, {args.calls} concurrent calls against ${LIMIT:.2f}: {result['ok']} let through, "
          f"{result['refused']} refused; spent ${result['spent']:.4f} (limit ${LIMIT:.2f}), "
          f"${result['reserved']:.4f} still reserved")
    if result["messages"]:
        print(f"  refusal: {result['messages'][0]}")
    print(f"  reference, the same calls checked against the spend so far and charged after (no reservation): "
          f"{reference['ok']} let through, {reference['refused']} refused; spent ${reference['spent']:.4f}")
    if args.processes <= 0:
        return 0
    canon = canonicalize(REQUEST)

    from thrifty.redis_budget import RedisBudgetStore

    from benchmarks.redis_latency import start_redis

    if args.redis_url:
        url = args.redis_url
        stop = None
    else:
        url, stop = start_redis()
    try:
        import redis

        prefix = f"bench-budget-{int(time.time())}"
        per = args.calls // args.processes
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.budget", "--worker", url, prefix, str(per)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
        client = redis.Redis.from_url(url)
        while int(client.get(f"{prefix}:ready") or 0) < args.processes:
            time.sleep(0.02)
        client.set(f"{prefix}:go", 1)
        outputs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        store = RedisBudgetStore(url, RedisSettings(key_prefix=prefix, operation_timeout=5))
        spent, reserved = store.usage(budget(store).charges(canon)[0], time.time())
        ok, refused = sum(o["ok"] for o in outputs), sum(o["refused"] for o in outputs)
        print(f"{args.processes} processes on Redis, {per * args.processes} concurrent calls against ${LIMIT:.2f}: "
              f"{ok} let through, {refused} refused; spent ${spent:.4f} (limit ${LIMIT:.2f}), "
              f"${reserved:.4f} still reserved")
    finally:
        if stop is not None:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
