"""A separate OS process using thrifty's cross-process single-flight.

    python flight_worker.py URL PREFIX MODE [COUNT]

MODE is ``burst`` (COUNT concurrent identical requests, started when the test sets the go key),
``hang`` (lead one request whose upstream never answers), ``fail400`` (lead one request whose
upstream fails with a 400), ``streamfail`` (lead one streamed request that breaks off midway) or
``one`` (one request). The upstream counts its calls in Redis (``PREFIX:upstream-calls``); with
``FOLLOWERS=n`` it answers only once n other processes follow the call (subscribers of its
channel), then after ``DELAY`` seconds. Prints one JSON object with what this process saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import redis
from thrifty.completion import Completion
from thrifty.gate import Reused, Thrifty
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.request import canonicalize
from thrifty.settings import ThriftySettings

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What's the status of order 44921?"}]}


class Rejected(Exception):
    status_code = 400


def main() -> None:
    url, prefix, mode = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    settings = ThriftySettings(
        cache={"backend": "memory", "semantic": False}, ledger={"path": None},
        dedup={"backend": "redis", "lease_seconds": float(os.environ.get("LEASE", "1")),
               "max_wait": float(os.environ.get("MAX_WAIT", "30"))},
        redis={"url": url, "key_prefix": prefix})
    gate = Thrifty(settings, ledger=Ledger(), prices=PriceTable(use_litellm=False))
    counter = redis.Redis.from_url(url)
    channel = f"{prefix}:flight:done:{canonicalize(REQUEST, settings).exact_key}"

    async def followed_by(processes: int) -> None:
        deadline = time.time() + 120
        while dict(counter.pubsub_numsub(channel)).get(channel.encode(), 0) < processes:
            assert time.time() < deadline, "the other processes never followed"
            await asyncio.sleep(0.01)

    async def upstream(call: dict[str, Any]) -> Completion:
        counter.incr(f"{prefix}:upstream-calls")
        await followed_by(int(os.environ.get("FOLLOWERS", "0")))
        if mode == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(float(os.environ.get("DELAY", "1")))
        if mode == "fail400":
            raise Rejected("context length exceeded")
        return Completion(answer={"content": f"from pid {os.getpid()}"}, text="x", cost=0.01)

    async def one() -> dict[str, Any]:
        started = time.time()
        try:
            result = await gate.acall(REQUEST, upstream)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return {"error": type(exc).__name__, "status": getattr(exc, "status_code", None),
                    "waited": time.time() - started}
        source = result.source if isinstance(result, Reused) else "upstream"
        content = (result.answer if isinstance(result, Reused) else dict(result.answer))["content"]
        return {"source": source, "content": content, "waited": time.time() - started,
                "finished_at": time.time()}

    async def burst() -> list[dict[str, Any]]:
        counter.incr(f"{prefix}:ready")
        while not counter.exists(f"{prefix}:go"):
            await asyncio.sleep(0.005)
        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def stream_and_fail() -> dict[str, Any]:
        ticket = await gate.abegin(REQUEST)
        counter.incr(f"{prefix}:upstream-calls")
        await followed_by(int(os.environ.get("FOLLOWERS", "0")))  # some chunks went out, then:
        await ticket.afail(ConnectionResetError("upstream closed the stream"), mid_stream=True)  # type: ignore[union-attr]
        return {"leader": True}

    if mode == "burst":
        results = asyncio.run(burst())
    elif mode == "streamfail":
        results = [asyncio.run(stream_and_fail())]
    else:
        results = [asyncio.run(one())]
    print(json.dumps({"pid": os.getpid(), "results": results}), flush=True)


if __name__ == "__main__":
    main()
