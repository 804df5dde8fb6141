"""Single-flight: how many upstream calls, and how late the followers are.

    thrifty bench dedup [--requests 1000] [--processes 8] [--per-process 50] [--redis-url URL]

1. In one process, ``--requests`` concurrent identical async requests through the gate, with an
   upstream that takes 0.5 s: upstream calls made, and each follower's delay between the moment
   the leader's answer arrived and the moment the follower returned.
2. ``--processes`` OS processes of ``--per-process`` concurrent identical requests each, sharing
   the in-flight table through Redis (started by the benchmark from the test extras unless
   ``--redis-url`` is given): upstream calls made (counted in Redis), and the same follower delay
   across processes.

Delays are wall-clock on a shared 2-core machine: read the p50s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from thrifty.completion import Completion
from thrifty.gate import Reused, Thrifty
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.settings import ThriftySettings

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What's the status of order 44921?"}]}


def gate(**settings: Any) -> Thrifty:
    config = ThriftySettings(cache={"backend": "memory", "semantic": False}, ledger={"path": None}, **settings)
    return Thrifty(config, ledger=Ledger(), prices=PriceTable(use_litellm=False))


async def burst(g: Thrifty, count: int, on_call: Any) -> list[tuple[str, float]]:
    """``count`` concurrent identical requests; (source, time returned) for each."""
    answered_at: dict[str, float] = {}

    async def upstream(call: dict[str, Any]) -> Completion:
        on_call()
        await asyncio.sleep(0.5)
        answered_at["leader"] = time.time()
        return Completion(answer={"content": "Shipped."}, text="Shipped.", cost=0.01)

    async def one() -> tuple[str, float]:
        result = await g.acall(REQUEST, upstream)
        return ("upstream" if not isinstance(result, Reused) else result.source), time.time()

    return list(await asyncio.gather(*(one() for _ in range(count))))


def in_process(count: int) -> dict[str, Any]:
    g = gate()
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1

    results = asyncio.run(burst(g, count, counted))
    leader_done = max(t for source, t in results if source == "upstream")
    delays = [1000 * (t - leader_done) for source, t in results if source == "joined"]
    return {"requests": count, "upstream_calls": calls, "joined": len(delays),
            "follower_delay_ms_p50": float(np.percentile(delays, 50)),
            "follower_delay_ms_p99": float(np.percentile(delays, 99))}


def worker(url: str, prefix: str, count: int) -> None:
    """One of the processes of the cross-process run (started by :func:`across_processes`)."""
    import redis

    client = redis.Redis.from_url(url)
    g = gate(dedup={"backend": "redis"}, redis={"url": url, "key_prefix": prefix})

    def counted() -> None:
        client.incr(f"{prefix}:calls")

    client.incr(f"{prefix}:ready")
    while not client.exists(f"{prefix}:go"):
        time.sleep(0.005)
    results = asyncio.run(burst(g, count, counted))
    for source, t in results:
        if source == "upstream":
            client.set(f"{prefix}:leader-done", repr(t))
    print(json.dumps(results))


def across_processes(url: str, processes: int, per_process: int) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    prefix = f"bench-dedup-{os.getpid()}-{int(time.time())}"
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.dedup", "--worker", url, prefix, str(per_process)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    while int(client.get(f"{prefix}:ready") or 0) < processes:
        time.sleep(0.05)
    client.set(f"{prefix}:go", 1)
    results = [tuple(r) for p in procs for r in json.loads(p.communicate()[0].strip().splitlines()[-1])]
    leader_done = float(client.get(f"{prefix}:leader-done") or 0)
    delays = [1000 * (t - leader_done) for source, t in results if source == "joined"]
    return {"requests": len(results), "upstream_calls": int(client.get(f"{prefix}:calls") or 0),
            "joined": len(delays), "follower_delay_ms_p50": float(np.percentile(delays, 50)),
            "follower_delay_ms_p99": float(np.percentile(delays, 99))}


def _nothing() -> None:
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--worker"]:
        worker(args_list[1], args_list[2], int(args_list[3]))
        return 0
    parser = argparse.ArgumentParser(prog="thrifty bench dedup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=50)
    parser.add_argument("--redis-url")
    args = parser.parse_args(args_list)
    for count in (args.requests, 10):
        local = in_process(count)
        print(f"in one process: {local['requests']} concurrent identical requests -> {local['upstream_calls']} "
              f"upstream call(s), {local['joined']} joined; follower delay after the leader's answer "
              f"p50 {local['follower_delay_ms_p50']:.3f} ms, p99 {local['follower_delay_ms_p99']:.3f} ms")
    from benchmarks.redis_latency import start_redis

    if args.redis_url:
        url, stop = args.redis_url, _nothing
    else:
        url, stop = start_redis()
    try:
        remote = across_processes(url, args.processes, args.per_process)
    finally:
        stop()
    print(f"across {args.processes} processes x {args.per_process}: {remote['requests']} requests -> "
          f"{remote['upstream_calls']} upstream call(s), {remote['joined']} joined; follower delay after the "
          f"leader's answer p50 {remote['follower_delay_ms_p50']:.3f} ms, p99 {remote['follower_delay_ms_p99']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
