"""Single-flight across OS processes through a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from conftest import answer, async_wait_for, chat, make_gate, wait_for
from flight_worker import REQUEST
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused
from thrifty.request import canonicalize

WORKER = Path(__file__).with_name("flight_worker.py")


def start(url: str, prefix: str, mode: str, count: int = 1, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), url, prefix, mode, str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def output(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-2000:]
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def followers(client: redis.Redis, prefix: str) -> int:
    """How many processes follow the worker's request through Redis (subscribers of its channel)."""
    channel = f"{prefix}:flight:done:{canonicalize(REQUEST).exact_key}"
    return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))


def test_eight_processes_of_fifty_requests_make_one_upstream_call(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    workers = [start(redis_url, redis_prefix, "burst", 50, FOLLOWERS="7", DELAY="0") for _ in range(8)]
    wait_for(lambda: int(client.get(f"{redis_prefix}:ready") or 0) == 8, timeout=180)
    client.set(f"{redis_prefix}:go", 1)
    outputs = [output(w) for w in workers]
    assert int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1
    results = [r for o in outputs for r in o["results"]]
    assert len(results) == 400 and all("error" not in r for r in results)
    assert len({r["content"] for r in results}) == 1
    assert sum(r["source"] == "upstream" for r in results) == 1


def test_a_crashed_leader_is_taken_over_by_one_follower(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    leader = start(redis_url, redis_prefix, "hang", LEASE="1")
    wait_for(lambda: int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1)
    waiting = [start(redis_url, redis_prefix, "one", LEASE="1", DELAY="0.2") for _ in range(2)]
    wait_for(lambda: followers(client, redis_prefix) == 2, what="two processes following the leader")
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    results = [output(f)["results"][0] for f in waiting]
    assert int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 2  # the dead leader's, and one take-over
    assert sorted(r["source"] for r in results) == ["joined", "upstream"]
    assert results[0]["content"] == results[1]["content"]


def test_a_deterministic_failure_reaches_followers_in_other_processes(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    leader = start(redis_url, redis_prefix, "fail400", FOLLOWERS="1", DELAY="0")
    wait_for(lambda: int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1)
    follower = start(redis_url, redis_prefix, "one", DELAY="0")
    assert output(leader)["results"][0]["error"] == "Rejected"
    result = output(follower)["results"][0]
    assert result["error"] == "UpstreamError" and result["status"] == 400
    assert int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1


def test_a_stream_failing_midway_fails_followers_in_other_processes(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    leader = start(redis_url, redis_prefix, "streamfail", FOLLOWERS="1")
    wait_for(lambda: int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1)
    follower = start(redis_url, redis_prefix, "one", DELAY="0")
    output(leader)
    result = output(follower)["results"][0]
    assert result["error"] == "StreamFailed"
    assert int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1  # the follower did not call


def test_nobody_waits_past_the_deadline(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    leader = start(redis_url, redis_prefix, "hang", LEASE="5")
    wait_for(lambda: int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1)
    follower = start(redis_url, redis_prefix, "one", LEASE="5", MAX_WAIT="1.5", DELAY="0")
    result = output(follower)["results"][0]
    assert leader.poll() is None  # the leader still hangs
    leader.kill()
    leader.wait()
    assert result["source"] == "upstream"  # it gave up waiting and called itself
    assert int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 2


def test_redis_down_falls_back_to_in_process_single_flight(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, dedup={"backend": "redis"},
                     redis={"url": "redis://127.0.0.1:1/0", "connect_timeout": 0.05, "operation_timeout": 0.05})
    calls = 0
    request = chat("Status of order 44921?")

    async def scenario() -> list[Any]:
        answer_now = asyncio.Event()

        async def upstream(call: dict[str, Any]) -> Completion:
            nonlocal calls
            calls += 1
            await answer_now.wait()
            return answer("Shipped.")

        tasks = [asyncio.create_task(gate.acall(request, upstream)) for _ in range(50)]
        await async_wait_for(lambda: gate.local_flights.followers(canonicalize(request).exact_key) == 49)
        answer_now.set()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(scenario())
    assert calls == 1 and sum(isinstance(r, Reused) for r in results) == 49


def test_sync_callers_in_two_processes_share_one_call(redis_url: str, redis_prefix: str,
                                                      embedder: SentenceTransformerEmbedder) -> None:
    """The blocking API (threads, LangChain's sync cache) uses the same Redis protocol."""
    client = redis.Redis.from_url(redis_url)
    gate = make_gate(embedder, cache={"semantic": False}, dedup={"backend": "redis", "lease_seconds": 1},
                     redis={"url": redis_url, "key_prefix": redis_prefix})
    leader = start(redis_url, redis_prefix, "one", FOLLOWERS="1")
    wait_for(lambda: int(client.get(f"{redis_prefix}:upstream-calls") or 0) == 1)
    result = gate.call(REQUEST, lambda call: answer("never called"))
    assert isinstance(result, Reused) and result.source == "joined"
    assert result.answer["content"] == output(leader)["results"][0]["content"]
