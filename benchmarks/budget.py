"""Budgets under fire: can concurrent calls overspend a limit?

    thrifty bench budget [--calls 500] [--processes 4] [--redis-url URL]

1. In one process: ``--calls`` threads at once, each reserving the worst case of a call against
   a $0.50 tenant limit, "calling" for 5 ms and settling its real cost.
2. Across ``--processes`` processes sharing the limit in Redis (started by the benchmark unless
   ``--redis-url`` is given), ``--calls`` calls in all.

Prints the calls let through and refused, the final spend against the limit, and one refusal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from thrifty.budget import Budget, BudgetExceeded, BudgetStore
from thrifty.pricing import PriceTable
from thrifty.request import canonicalize
from thrifty.settings import BudgetSettings, LimitSettings, ModelPrice, RedisSettings

LIMIT = 0.50
REQUEST = {"model": "big-model", "max_tokens": 100, "metadata": {"tenant": "acme"},
           "messages": [{"role": "user", "content": "What is the refund policy for online orders?"}]}


def budget(store: BudgetStore | None = None) -> Budget:
    prices = PriceTable({"big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
    return Budget(BudgetSettings(limits=[LimitSettings(scope="tenant", usd=LIMIT)]), prices, store=store)


def spend(b: Budget, calls: int, start: threading.Event | None = None) -> dict[str, Any]:
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
        b.settle(reservation, 0.003)  # the real cost, below the reserved worst case
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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--worker"]:
        worker(args_list[1], args_list[2], int(args_list[3]))
        return 0
    parser = argparse.ArgumentParser(prog="thrifty bench budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--redis-url")
    args = parser.parse_args(args_list)

    local = budget()
    result = spend(local, args.calls)
    canon = canonicalize(REQUEST)
    spent, reserved = local.store.usage(local.charges(canon)[0], time.time())
    print(f"one process, {args.calls} concurrent calls against ${LIMIT:.2f}: {result['ok']} let through, "
          f"{result['refused']} refused; spent ${spent:.4f} (limit ${LIMIT:.2f}), ${reserved:.4f} still reserved")
    if result["messages"]:
        print(f"  refusal: {result['messages'][0]}")

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
