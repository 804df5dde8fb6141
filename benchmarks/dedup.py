"""Single-flight: how many upstream calls, and how late the followers are.

    thrifty bench dedup [--requests 1000] [--processes 8] [--per-process 50] [--redis-url URL]

1. In one process, ``--requests`` concurrent identical async requests through the gate, with an
   upstream that takes 0.5 s: upstream calls made, and each follower's delay between the moment
   the leader's answer arrived and the moment the follower returned. Beside it, the references:
   the same burst through a gate with single-flight off (``dedup.enabled: false``), and the delay
   of plain asyncio itself - as many tasks waiting on one future, from its result to each task
   returning.
2. ``--processes`` OS processes of ``--per-process`` concurrent identical requests each, sharing
   the in-flight table through Redis (started by the benchmark from the test extras unless
   ``--redis-url`` is given): upstream calls made (counted in Redis), and the same follower delay
   across processes. ``--processes 0`` skips it.

Targets (issue 4): 1 upstream call per burst; follower delay p50 <= 1 ms in one process, <= 5 ms
across processes. Delays are wall-clock on a shared 2-core machine: read the p50s.
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

from benchmarks.summary_row import SummaryRow, Target, command, summary_argv

QUICK = ("--processes", "0")  # the summary's run: in one process (no Redis), full size
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


def in_process(count: int, **settings: Any) -> dict[str, Any]:
    """``count`` concurrent identical requests through one gate: upstream calls, joined callers,
    follower delay p50/p99 (None when no caller joined)."""
    g = gate(**settings)
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1

    results = asyncio.run(burst(g, count, counted))
    leader_done = max(t for source, t in results if source == "upstream")
    delays = [1000 * (t - leader_done) for source, t in results if source == "joined"]
    return {"requests": count, "upstream_calls": calls, "joined": len(delays),
            "follower_delay_ms_p50": float(np.percentile(delays, 50)) if delays else None,
            "follower_delay_ms_p99": float(np.percentile(delays, 99)) if delays else None}


def future_wakeup(count: int) -> float:
    """p50 ms from setting one asyncio future's result to each of ``count`` tasks awaiting it
    returning: what asyncio itself costs a follower, before any thrifty code."""

    async def run() -> list[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def wait() -> float:
            await future
            return time.perf_counter()

        tasks = [asyncio.ensure_future(wait()) for _ in range(count)]
        await asyncio.sleep(0)  # every task is waiting on the future
        started = time.perf_counter()
        future.set_result(started)
        return [1000 * (t - started) for t in await asyncio.gather(*tasks)]

    return float(np.percentile(asyncio.run(run()), 50))


def measure_in_process(requests: int) -> list[dict[str, Any]]:
    """For bursts of ``requests`` and of 10: the burst through thrifty, its references (no
    single-flight; asyncio's own wake-up delay) under ``reference``."""
    out = []
    for count in (requests, 10):
        local = in_process(count)
        local["reference"] = {"upstream_calls": in_process(count, dedup={"enabled": False})["upstream_calls"],
                              "future_wakeup_ms_p50": future_wakeup(count)}
        out.append(local)
    return out


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench dedup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=8, help="processes sharing Redis (0 skips)")
    parser.add_argument("--per-process", type=int, default=50)
    parser.add_argument("--redis-url")
    return parser


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """The in-process headline figures (upstream calls per burst, follower delay p50), beside the
    references. ``argv`` (default: :data:`QUICK`, whatever ``quick``: it is the full size)
    overrides the sizes; the Redis run is never part of the summary."""
    argv = summary_argv(argv, quick, QUICK, full=QUICK)
    args = _parser().parse_args(argv)
    big, small = measure_in_process(args.requests)
    cmd = command("dedup", argv)
    return [
        SummaryRow("dedup", f"{big['requests']:,} concurrent identical requests: upstream calls",
                   big["upstream_calls"], "", big["reference"]["upstream_calls"], "single-flight off",
                   Target("==", 1, "issue 4"), cmd),
        *(SummaryRow("dedup", f"follower delay p50, {r['requests']:,} callers", r["follower_delay_ms_p50"], "ms",
                     r["reference"]["future_wakeup_ms_p50"], "asyncio waking as many tasks on one future",
                     Target("<=", 1.0, "issue 4"), cmd) for r in (big, small))]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--worker"]:
        worker(args_list[1], args_list[2], int(args_list[3]))
        return 0
    args = _parser().parse_args(args_list)
    for local in measure_in_process(args.requests):
        reference = local["reference"]
        print(f"in one process: {local['requests']} concurrent identical requests -> {local['upstream_calls']} "
              f"upstream call(s), {local['joined']} joined; follower delay after the leader's answer "
              f"p50 {local['follower_delay_ms_p50']:.3f} ms, p99 {local['follower_delay_ms_p99']:.3f} ms")
        print(f"  references: single-flight off -> {reference['upstream_calls']} upstream calls; asyncio waking "
              f"{local['requests']} tasks on one future: p50 {reference['future_wakeup_ms_p50']:.3f} ms")
    if args.processes <= 0:
        return 0
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
