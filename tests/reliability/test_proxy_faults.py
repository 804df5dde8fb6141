"""Reliability through the real LiteLLM proxy (issue 14): the faults of ``test_faults.py`` and a
soak, with thrifty as the proxy's callback (``litellm_plugins.proxy_handler``), its cache and
single-flight in Redis, in front of the live stand-in provider (``thrifty.standin``), driven by
concurrent ``openai`` clients.

One proxy serves the module. Its Redis is the module's own (the session's Redis cannot be killed
without breaking the tests after these), started from the same binaries, with RediSearch, behind a
loopback relay (:class:`~faults_support.SlowRelay`) that can slow every read. Each test checks
that every client call ends with an answer or with the provider's own error status (never an
error of thrifty's), that every answer is the stand-in's whole answer to that request's own
question, that nothing failed or partial is stored in Redis, that the proxy's ledger counts what
the stand-in answered, and that the proxy serves (and the cache hits) afterwards.

The 20,000-request soak runs with ``THRIFTY_SOAK=1``; a 600-request soak runs by default. Times to
recover are printed (``-s``) for the README's table, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
import redis
import yaml
from conftest import REPO, Standin, wait_for
from faults_support import PrivateRedis, ResettingServer, SlowRelay, drain, questions, report
from proxy_process import ProxyProcess, proxy_available
from thrifty.ledger import LedgerEvent, read_events, summarize

pytestmark = pytest.mark.slow

UNAVAILABLE = proxy_available()
if UNAVAILABLE is not None:
    pytest.skip(UNAVAILABLE, allow_module_level=True)

SOAK = os.environ.get("THRIFTY_SOAK") == "1"
MODEL = "gpt-4o-mini"
_DIRECTIVE = re.compile(r"\[(status|delay|hold|cut):[^\]]+\]")


@dataclass
class Rig:
    """The module's proxy and what stands around it."""

    proxy: ProxyProcess
    redis: PrivateRedis
    relay: SlowRelay
    resets: ResettingServer
    prefix: str
    ledger: Path

    def events(self) -> list[LedgerEvent]:
        return list(read_events(self.ledger)) if self.ledger.is_file() else []

    def keys(self, pattern: str) -> list[str]:
        with redis.Redis.from_url(self.redis.url, socket_timeout=5) as client:
            return [key.decode() for key in client.scan_iter(f"{self.prefix}:{pattern}", count=1000)]

    def entries(self) -> dict[str, dict[str, str]]:
        """Every cache entry in Redis: exact key -> its text, tenant, model and answer's content."""
        with redis.Redis.from_url(self.redis.url, socket_timeout=5, decode_responses=False) as client:
            out = {}
            for key in client.scan_iter(f"{self.prefix}:cache:e:*", count=1000):
                fields = client.hmget(key, ["text", "tenant", "model", "answer"])
                text, tenant, model, answer = (f.decode() if f is not None else "" for f in fields)
                out[key.decode()] = {"text": text, "tenant": tenant, "model": model, "content": content_of(answer)}
            return out


def content_of(answer: str) -> str:
    try:
        data = json.loads(answer)
        return str(data["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"<unreadable answer {answer[:80]!r}>"


def full_answer(text: str, model: str = MODEL) -> str:
    """The stand-in's whole answer to ``text``."""
    return f"[{model}] Answer to: {_DIRECTIVE.sub('', text).strip()}"


@pytest.fixture(scope="module")
def rig(standin_server: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The example config, with the cache and single-flight in the module's Redis (through the
    relay), and a model group ``resetting`` whose provider resets every connection. The Redis
    client is impatient (1 s) and gives up on a failing Redis after 2 failures for 0.5 s."""
    folder = tmp_path_factory.mktemp("proxy-faults")
    server = PrivateRedis(folder, persistent=True)
    server.start()
    relay = SlowRelay(server.port)
    resets = ResettingServer().start()
    prefix = f"pf{uuid.uuid4().hex[:8]}"
    config = yaml.safe_load((REPO / "examples" / "litellm_config.yaml").read_text())
    config["model_list"].append({"model_name": "resetting", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": resets.url, "api_key": "sk-standin"}})
    section = config["thrifty"]
    section["cache"] = {"backend": "redis"}
    section["dedup"] = {"backend": "redis", "result_ttl": 5}  # a finished flight's result, for late followers
    section["redis"] = {"url": relay.url, "key_prefix": prefix, "operation_timeout": 1.0, "connect_timeout": 1.0,
                        "breaker_failures": 2, "breaker_cooldown": 0.5}
    section["prices"] = {"resetting": {"input_per_token": 1.5e-7, "output_per_token": 6e-7}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    ledger = folder / "ledger.jsonl"
    env = {"OPENAI_API_BASE": standin_server.url, "OPENAI_API_KEY": "sk-standin",
           "THRIFTY_LEDGER__PATH": str(ledger)}
    proxy = None
    try:
        proxy = ProxyProcess(path, env=env, log=folder / "proxy.log")
        rig = Rig(proxy, server, relay, resets, prefix, ledger)
        # the first request loads the models and opens the clients: not part of any test's numbers
        asyncio.run(burst(rig, [Job("good", f"Warm-up question {i}?") for i in range(4)]))
        yield rig
    finally:
        if proxy is not None:
            proxy.stop()
        resets.close()
        relay.close()
        server.close()


# ------------------------------------------------------------------------------------ the workload


@dataclass
class Job:
    kind: str  # good, 429, 500, timeout, reset, cut
    text: str
    number: str | None = None  # the question's number, which its answer must name


@dataclass
class Outcome:
    job: Job
    status: int | None  # HTTP status; None: the stream broke (the error is in ``error``)
    decision: str | None = None
    answer: str = ""
    error: str = ""
    seconds: float = 0.0


async def ask(client: openai.AsyncOpenAI, job: Job) -> Outcome:
    started = time.monotonic()
    outcome = await _ask(client, job)
    outcome.seconds = time.monotonic() - started
    return outcome


async def _ask(client: openai.AsyncOpenAI, job: Job) -> Outcome:
    model = "resetting" if job.kind == "reset" else MODEL
    extra: dict[str, Any] = {"extra_body": {"timeout": 0.5}} if job.kind == "timeout" else {}
    messages: Any = [{"role": "user", "content": job.text}]
    if job.kind == "cut":
        parts: list[str] = []
        try:
            raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
            async for chunk in raw.parse():
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
        except openai.APIStatusError as error:
            return Outcome(job, error.status_code, answer="".join(parts), error=str(error))
        except openai.APIError as error:  # the proxy's error event in the stream
            return Outcome(job, None, answer="".join(parts), error=str(error))
        return Outcome(job, raw.http_response.status_code, raw.headers.get("x-thrifty-decision"), "".join(parts))
    try:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)
    except openai.APIStatusError as error:
        return Outcome(job, error.status_code, error=str(error))
    return Outcome(job, raw.http_response.status_code, raw.headers.get("x-thrifty-decision"),
                   str(raw.parse().choices[0].message.content))


async def burst(rig: Rig, jobs: list[Job], concurrency: int | None = None) -> list[Outcome]:
    """Every job at once (or ``concurrency`` at a time), each its own request."""
    async with openai.AsyncOpenAI(base_url=rig.proxy.url + "/v1", api_key=rig.proxy.master_key, max_retries=0,
                                  timeout=120) as client:
        gate = asyncio.Semaphore(concurrency or len(jobs) or 1)

        async def one(job: Job) -> Outcome:
            async with gate:
                return await ask(client, job)

        return list(await asyncio.gather(*(one(job) for job in jobs)))


def good_jobs(numbered: list[tuple[str, str, str]]) -> list[Job]:
    """Each question twice and its paraphrase once."""
    jobs = []
    for question, paraphrase, number in numbered:
        jobs += [Job("good", question, number), Job("good", question, number), Job("good", paraphrase, number)]
    return jobs


def answers_by_number(numbered: list[tuple[str, str, str]]) -> dict[str, set[str]]:
    """The whole answers a question may get: the stand-in's answer to it or to its paraphrase."""
    return {number: {full_answer(q), full_answer(p)} for q, p, number in numbered}


def check_answers(outcomes: list[Outcome], allowed: dict[str, set[str]]) -> None:
    """Every good call answered (HTTP 200) with the whole answer to its own question."""
    for outcome in outcomes:
        if outcome.job.kind != "good":
            continue
        assert outcome.status == 200, (outcome.job.text, outcome.status, outcome.error)
        assert outcome.job.number is not None
        assert outcome.answer in allowed[outcome.job.number], (outcome.job.text, outcome.answer)


def check_store(rig: Rig, tenant: str) -> dict[str, dict[str, str]]:
    """Nothing wrong or partial in Redis: every entry's answer is the stand-in's whole answer to
    the entry's own question, no failed call was stored, and every entry is the caller's tenant's
    on the model it asked for."""
    entries = rig.entries()
    for entry in entries.values():
        assert entry["content"] == full_answer(entry["text"]), entry
        assert not re.search(r"\[(status|delay):|parcel", entry["text"]), entry
        assert (entry["tenant"], entry["model"]) == (tenant, MODEL), entry
    return entries


def proxy_tenant(rig: Rig) -> str:
    """The tenant the proxy gives the master key (from the warm-up's ledger events)."""
    wait_for(rig.events, what="the warm-up in the proxy's ledger")
    tenant = rig.events()[0].tenant
    assert tenant
    return tenant


def books_match(rig: Rig, standin: Standin, mark: int, extra_calls: int = 0) -> list[LedgerEvent]:
    """Wait until the proxy's ledger (the events after ``mark``) has every upstream call the
    stand-in saw (and ``extra_calls`` that never reached it); the events."""
    wait_for(lambda: summarize(rig.events()[mark:]).calls == standin.calls() + extra_calls, timeout=60,
             what="the proxy's ledger to count every upstream call")
    return rig.events()[mark:]


def no_leases(rig: Rig, within: float = 40) -> None:
    """No single-flight lease left in Redis (one whose release was lost lapses after
    ``dedup.lease_seconds``, 10 s; one taken by a SET whose reply came too late is released at
    the proxy's next acquire)."""
    wait_for(lambda: not rig.keys("flight:lease:*"), timeout=within, what="every single-flight lease to go")


def serves_again(rig: Rig, text: str, number: str) -> None:
    """The proxy answers a new question, then serves its repeat from the cache."""
    first = asyncio.run(burst(rig, [Job("good", text, number)]))[0]
    assert (first.status, first.decision, first.answer) == (200, "call", full_answer(text))

    def hit() -> bool:
        again = asyncio.run(burst(rig, [Job("good", text, number)]))[0]
        assert again.status == 200 and again.answer == full_answer(text)
        return again.decision == "cache_hit"

    wait_for(hit, timeout=30, what="the repeat to be served from the cache")


# ------------------------------------------------------------------------------------ provider faults

FAULTS = {  # text -> (kind, the HTTP status the client must get, what the proxy's message must say)
    "Reset my API quota please [status:429]": ("429", 429, "stand-in failure 429"),
    "Export the yearly report [status:500]": ("500", 500, "stand-in failure 500"),
    "Summarise the whole archive [delay:3]": ("timeout", 408, "Request timed out"),
}
CUT = "Tell me about the loyalty programme in detail please. [cut:2]"


def test_provider_faults_through_the_proxy(rig: Rig, standin: Standin) -> None:
    """A mixed burst through the proxy: good questions with repeats and paraphrases, and 429s,
    500s, timeouts (``timeout: 0.5`` in the body, provider 3 s), connection resets (model
    ``resetting``) and streams cut after 2 chunks, all at once; the proxy's Router retries them
    as it does by default (2 retries). Each fault reaches its client with the provider's status;
    each good call gets its own answer; nothing faulty is stored; the ledger counts every attempt
    the stand-in saw, each booked to the caller's tenant and the model it asked for."""
    tenant = proxy_tenant(rig)
    good = questions(20, start=100)
    jobs = good_jobs(good)
    for i in range(len(good)):
        text = list(FAULTS)[i % len(FAULTS)]
        jobs.append(Job(FAULTS[text][0], text))
        if i % 4 == 0:
            jobs += [Job("cut", CUT), Job("reset", f"Where is my parcel {i}?")]
    random.Random(14).shuffle(jobs)
    mark, accepted = len(rig.events()), rig.resets.accepted
    started = time.monotonic()
    outcomes = asyncio.run(burst(rig, jobs))
    elapsed = time.monotonic() - started
    slowest: dict[str, float] = {}
    for outcome in outcomes:
        slowest[outcome.job.kind] = max(slowest.get(outcome.job.kind, 0.0), outcome.seconds)
    report(f"proxy, provider faults: {len(jobs)} concurrent calls ended in {elapsed:.2f} s; slowest call by kind: "
           f"{', '.join(f'{k} {v:.2f} s' for k, v in sorted(slowest.items()))}")

    check_answers(outcomes, answers_by_number(good))
    for outcome in outcomes:
        kind, text = outcome.job.kind, outcome.job.text
        if kind in ("429", "500", "timeout"):
            _, status, says = FAULTS[text]
            assert (outcome.status, says in outcome.error) == (status, True), (text, outcome.status, outcome.error)
        elif kind == "reset":  # no provider status: LiteLLM's connection error, as the proxy answers it
            assert outcome.status == 500 and "Connection error" in outcome.error, (outcome.status, outcome.error)
        elif kind == "cut":  # the stream ends in an error, after the chunks sent before the cut (a caller that
            # joined the broken stream gets its error before its own stream starts)
            assert outcome.status in (None, 500) and "Connection error" in outcome.error, (outcome.status,
                                                                                            outcome.error)
            assert full_answer(CUT).startswith(outcome.answer) and outcome.answer != full_answer(CUT)
        if kind != "good":
            assert "thrifty" not in outcome.error.lower(), outcome.error  # the provider's error, not thrifty's
    resets = rig.resets.accepted - accepted
    assert resets >= 3 * sum(o.job.kind == "reset" for o in outcomes)  # each attempt reached the provider
    events = books_match(rig, standin, mark, extra_calls=resets)
    totals = summarize(events)
    # each caller of a fault that is not deterministic makes its own call (and the Router retries it)
    assert totals.failed >= sum(o.job.kind in ("429", "500", "timeout", "reset") for o in outcomes)
    # each event is the caller's: its tenant from the proxy's auth, the model group it asked for
    assert {(e.tenant, e.model) for e in events} <= {(tenant, MODEL), (tenant, "resetting")}, \
        sorted({(e.tenant, e.model) for e in events}, key=str)

    # nothing failed or partial was stored; each fault goes upstream again
    assert not [e for e in check_store(rig, tenant).values() if "[cut:" in e["text"]]
    before = standin.calls()
    again = asyncio.run(burst(rig, [Job(kind, text) for text, (kind, _, _) in FAULTS.items()]
                                   + [Job("good", CUT, None)]))
    assert [o.status for o in again] == [429, 500, 408, 200]
    assert (again[3].decision, again[3].answer) == ("call", full_answer(CUT))  # whole, and not a stored part
    wait_for(lambda: standin.calls() - before >= 3 * 3 + 1, what="the faults to reach the provider again")
    no_leases(rig)
    serves_again(rig, "What is the status of order 19999?", "19999")
    drain(standin)


# ------------------------------------------------------------------------------------ Redis faults


def test_redis_paused_slowed_killed_and_restarted_under_the_proxy(rig: Rig, standin: Standin) -> None:
    """The proxy's cache and leases on Redis (append-only, fsync always) while bursts of calls
    run: Redis paused (SIGSTOP), slowed (every read 200 ms late, through the relay), killed and
    restarted from its file, killed and restarted empty (index gone). Every call completes with
    its own answer; acknowledged entries survive the restart from the file; the cache serves
    again by itself after each recovery."""
    tenant = proxy_tenant(rig)
    good = questions(50, start=5000)
    allowed = answers_by_number(good)
    mark = len(rig.events())
    client = openai.OpenAI(base_url=rig.proxy.url + "/v1", api_key=rig.proxy.master_key, max_retries=0, timeout=60)

    def run(jobs: list[Job], fault: str | None = None) -> list[Outcome]:
        started = time.monotonic()
        outcomes = asyncio.run(burst(rig, jobs))
        check_answers(outcomes, allowed)
        if fault:
            hits = sum(o.decision == "cache_hit" for o in outcomes)
            report(f"proxy, redis {fault}: {len(jobs)} concurrent calls all answered in "
                   f"{time.monotonic() - started:.2f} s (slowest {max(o.seconds for o in outcomes):.2f} s, "
                   f"{hits} cache hits)")
        return outcomes

    def served(question: str) -> bool:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": question}])
        assert str(raw.parse().choices[0].message.content) == full_answer(question)
        return raw.headers.get("x-thrifty-decision") == "cache_hit"

    def recovered(fault: str, question: str) -> None:
        started = time.monotonic()
        wait_for(lambda: served(question), timeout=60, what=f"the cache to serve again after {fault}")
        report(f"proxy, redis {fault}: the cache served again {time.monotonic() - started:.2f} s after")

    def jobs(numbered: list[tuple[str, str, str]], *, paraphrase: bool = False) -> list[Job]:
        return [Job("good", p if paraphrase else q, n) for q, p, n in numbered]

    stored = [q for q, _, _ in good[:20]]
    run(jobs(good[:20]) * 2)
    wait_for(lambda: all(served(q) for q in stored), what="the first answers to be acknowledged")
    try:
        # paused: calls complete (the breaker opens), then it serves again
        rig.redis.pause()
        run(jobs(good[20:30]) + jobs(good[:10], paraphrase=True) + jobs(good[:10]), "paused (SIGSTOP)")
        rig.redis.resume()
        recovered("SIGCONT", stored[0])

        # slowed: every read from Redis 200 ms late; calls complete, slower
        rig.relay.latency = 0.2
        run(jobs(good[30:40]) + jobs(good[10:20], paraphrase=True) + jobs(good[:10]), "slowed (200 ms per read)")
        rig.relay.latency = 0.0
        recovered("back to full speed", stored[1])

        # slowed past the client's timeout (1 s): every reply comes after its caller gave up on it
        rig.relay.latency = 1.5
        run(jobs(good[10:20]) + jobs(good[:10], paraphrase=True), "slowed past the timeout (1.5 s per read)")
        rig.relay.latency = 0.0
        recovered("back to full speed after replies came late", stored[3])
        started = time.monotonic()
        no_leases(rig)  # a lease taken by a command whose reply came too late lapses
        report(f"proxy, redis after late replies: no lease left {time.monotonic() - started:.2f} s after")

        # killed; calls complete while it is down; restarted from its append-only file
        rig.redis.kill()
        run(jobs(good[:20]) + jobs(good[40:45]), "killed")
        rig.redis.start()
        recovered("restarted from its append-only file", stored[2])
        assert all(served(q) for q in stored)  # every acknowledged entry survived

        # killed and restarted empty: the index is gone, thrifty recreates it
        rig.redis.kill()
        run(jobs(good[45:]), "killed again")
        rig.redis.start(fresh=True)
        started = time.monotonic()
        fresh, paraphrase, number = good[46]
        wait_for(lambda: served(fresh), timeout=60, what="a fresh store after the restart")
        hit = asyncio.run(burst(rig, [Job("good", paraphrase, number)]))[0]
        assert (hit.decision, hit.answer) == ("cache_hit", full_answer(fresh))  # semantic: the index is back
        report(f"proxy, redis restarted empty (index gone): semantic hits again {time.monotonic() - started:.2f} s "
               f"after")
    finally:
        rig.redis.resume()
        rig.relay.latency = 0.0
        if rig.redis.process is not None and rig.redis.process.poll() is not None:
            rig.redis.start(fresh=True)
        client.close()

    totals = summarize(books_match(rig, standin, mark))
    assert totals.failed == 0
    check_store(rig, tenant)
    no_leases(rig)
    serves_again(rig, "What is the status of order 19998?", "19998")


# ------------------------------------------------------------------------------------ soak

SOAK_REQUESTS = 20_000 if SOAK else 600
CONCURRENCY = 200 if SOAK else 50


def proxy_rss(proxy: ProxyProcess) -> int:
    """The resident memory of the proxy and its children (bytes)."""
    root = psutil.Process(proxy.process.pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


@pytest.mark.timeout(1800 if SOAK else 300)  # the 20,000 requests take about 5 minutes here
def test_soak_through_the_proxy_with_redis(rig: Rig, standin: Standin) -> None:
    """SOAK_REQUESTS requests at CONCURRENCY through the proxy, a seeded mix of new questions,
    repeats and paraphrases of asked ones: no error, every answer the whole answer to its own
    question; the ledger's calls and tokens equal the stand-in's; no lease left in Redis; the
    proxy's memory grows less than a stated bound."""
    tenant = proxy_tenant(rig)
    distinct = questions(SOAK_REQUESTS // 4, start=20_000)
    rng = random.Random(14)
    asked: list[tuple[str, str, str]] = []
    jobs: list[Job] = []
    fresh = iter(distinct)
    for _ in range(SOAK_REQUESTS):
        draw = rng.random()
        if asked and draw < 0.45:
            question, _, number = rng.choice(asked)
            jobs.append(Job("good", question, number))
        elif asked and draw < 0.7:
            _, paraphrase, number = rng.choice(asked)
            jobs.append(Job("good", paraphrase, number))
        else:
            item = next(fresh, None) or rng.choice(asked)
            asked.append(item)
            jobs.append(Job("good", item[0], item[2]))
    mark = len(rig.events())
    rss_start = proxy_rss(rig.proxy)
    started = time.monotonic()
    outcomes = asyncio.run(burst(rig, jobs, concurrency=CONCURRENCY))
    elapsed = time.monotonic() - started
    check_answers(outcomes, answers_by_number(distinct))
    events = books_match(rig, standin, mark)
    totals, stats = summarize(events), standin.stats()
    assert totals.calls == stats["calls"] and totals.failed == 0
    assert totals.tokens == stats["prompt_tokens"] + stats["completion_tokens"]
    assert totals.calls + totals.hits + totals.joined == SOAK_REQUESTS
    settled = time.monotonic()
    wait_for(lambda: not rig.keys("flight:*"), timeout=40, what="every lease and flight result to go")
    settled = time.monotonic() - settled
    rss_end = proxy_rss(rig.proxy)
    growth = (rss_end - rss_start) / 2**20
    decisions = {d: sum(o.decision == d for o in outcomes) for d in ("call", "cache_hit", "joined")}
    slowest = sorted(o.seconds for o in outcomes)
    report(f"proxy soak: {SOAK_REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s "
           f"({SOAK_REQUESTS / elapsed:.0f}/s; p50 {slowest[len(slowest) // 2]:.2f} s, "
           f"p99 {slowest[int(len(slowest) * 0.99)]:.2f} s); upstream {totals.calls}, hits {totals.hits}, "
           f"joined {totals.joined} (headers {decisions}); proxy RSS {rss_start / 2**20:.0f} -> "
           f"{rss_end / 2**20:.0f} MiB (+{growth:.0f}); no flight key left {settled:.1f} s after "
           f"(dedup.result_ttl 5 s)")
    check_store(rig, tenant)
    # MiB: the proxy keeps the ledger's events, the served-answer memory and its own decisions per
    # call (bounded at 10,000), and LiteLLM its logging objects
    assert growth < (600 if SOAK else 200)
