"""The batch lane (thrifty.batch_lane, litellm_plugins.batch) through real LiteLLM against the
stand-in's files and batches endpoints: the batch price in the provider's bill, the ledger and the
budgets; answers from the cache or a call in flight without a batch; tenants kept apart; a
process killed at every stage loses nothing and sends nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import REPO, Standin, async_wait_for, wait_for
from thrifty.batch_queue import BatchQueue, storable
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.request import canonicalize
from thrifty.savings import savings_by_source
from thrifty.settings import ThriftySettings

import litellm_plugins

MODEL = "gpt-4o-mini"
WORKER = REPO / "tests" / "batch_worker.py"


def ask(question: str, tenant: str = "acme", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "metadata": {"tenant": tenant},
            **extra}


def gate_for(embedder: SentenceTransformerEmbedder, tmp_path: Path | None = None, **settings: Any) -> Thrifty:
    """A gate with LiteLLM's prices, a tenant budget, a memory cache and ledger, and a batch queue
    in ``tmp_path`` (memory when None) polled every 50 ms."""
    batch = {"path": tmp_path / "queue.sqlite3" if tmp_path else None, "poll_seconds": 0.05,
             "max_wait_seconds": 3600, **settings.pop("batch", {})}
    budget = settings.pop("budget", {"limits": [{"scope": "tenant", "usd": 5.0}]})
    config = ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}, batch=batch, budget=budget,
                             **settings)
    return Thrifty(config, embedder=embedder, ledger=Ledger())


def lane_for(gate: Thrifty, standin: Standin, **extra: Any) -> litellm_plugins.BatchLane:
    return litellm_plugins.BatchLane(gate=gate, api_base=standin.url, api_key="sk-standin", **extra)


def content(response: Any) -> str:
    return str(response.choices[0].message.content)


def test_deferred_requests_are_billed_at_the_batch_price(embedder: SentenceTransformerEmbedder, standin: Standin,
                                                         tmp_path: Path) -> None:
    gate = gate_for(embedder, tmp_path)
    questions = ["What is the refund policy?", "Where is order 4471?", "How do I reset my password?"]
    prices = PriceTable()
    price, batch_price = prices.price(MODEL), prices.batch_price(MODEL)
    assert price is not None and batch_price is not None
    assert batch_price.input_per_token == pytest.approx(price.input_per_token / 2)
    assert batch_price.output_per_token == pytest.approx(price.output_per_token / 2)

    async def scenario() -> tuple[list[Any], list[str], float]:
        lane = lane_for(gate, standin)
        async with lane:
            futures = [await lane.defer(**ask(q, api_key="sk-SECRET-in-request")) for q in questions]
            futures.append(await lane.defer(**ask(questions[0])))  # the same request again: shares its line
            queued = lane.lane.queue.get(futures[0].request_id)
            assert queued is not None and queued.state == "queued" and "api_key" not in queued.request
            reserved = queued.reserved
            assert await lane.flush() == 4
            responses = await asyncio.wait_for(asyncio.gather(*futures), 30)
        ids = [f.request_id for f in futures]
        lane.close()
        again = lane_for(gate, standin)  # a new lane on the same file hands results out by id
        assert content(await again.result(ids[1])) == content(responses[1])
        again.close()
        return responses, ids, reserved

    responses, _, reserved = asyncio.run(scenario())
    assert [content(r) for r in responses] == [f"[{MODEL}] Answer to: {q}" for q in questions + questions[:1]]
    assert [r._hidden_params["thrifty"]["source"] for r in responses] == ["batch"] * 3 + ["lane_joined"]
    # the worst case was reserved at the batch price
    request = ask(questions[0])
    assert reserved == pytest.approx(gate.budget.worst_case(request, MODEL) / 2)  # type: ignore[operator]
    billed = standin.stats()
    assert billed["calls"] == 0 and billed["batch"]["batches"] == 1 and billed["batch"]["lines"] == 3
    provider_bill = (billed["batch"]["prompt_tokens"] * price.input_per_token
                     + billed["batch"]["completion_tokens"] * price.output_per_token) / 2
    calls = [e for e in gate.ledger.events() if e.kind == "call"]
    assert len(calls) == 3 and {e.detail for e in calls} == {"batch"} and {e.outcome for e in calls} == {"ok"}
    assert sum(e.cost for e in calls) == pytest.approx(provider_bill, rel=1e-9)
    assert {e.lane for e in calls} == {"batch"}
    # the report counts the other half as the batch lane's saving, and nothing as routing's
    sources = savings_by_source(gate.ledger.events(), prices=prices)
    assert sources.batch == pytest.approx(provider_bill, rel=1e-9) and sources.routed == 0.0
    assert [e.kind for e in gate.ledger.events()].count("joined") == 1
    (_, _, spent, held), = gate.budget.remaining(canonicalize(request, gate.settings))
    assert spent == pytest.approx(provider_bill, rel=1e-9) and held == 0
    # every answer is in the cache: asked again, deferred or not, no call is made
    assert gate.lookup(request) is not None


def test_budgets_reserve_at_the_batch_price(embedder: SentenceTransformerEmbedder, standin: Standin) -> None:
    request = ask("Classify this ticket.", max_tokens=200)
    worst = Thrifty(ThriftySettings(ledger={"path": None}), ledger=Ledger()).budget.worst_case(request, MODEL)
    assert worst is not None
    gate = gate_for(embedder, budget={"limits": [{"scope": "tenant", "usd": worst * 0.75}]})

    async def scenario() -> None:
        with pytest.raises(litellm_plugins.BudgetExceededError):  # synchronously, the worst case does not fit
            await litellm.acompletion(**request, api_base=standin.url, api_key="sk-standin")
        lane = lane_for(gate, standin)
        async with lane:  # polled in the background
            future = await lane.defer(**request)  # at the batch price it does
            with pytest.raises(litellm_plugins.BudgetExceededError):  # and the limit holds: not twice
                await lane.defer(**ask("Classify that ticket.", max_tokens=200))
            await lane.flush()
            response = await asyncio.wait_for(future, 30)
        lane.close()
        assert content(response) == f"[{MODEL}] Answer to: Classify this ticket."
        assert response._hidden_params["thrifty"]["source"] == "batch"

    litellm_plugins.install(gate=gate)
    try:
        asyncio.run(scenario())
    finally:
        litellm_plugins.uninstall()
    assert standin.stats()["calls"] == 0 and standin.stats()["batch"]["lines"] == 1


def test_a_stored_answer_or_a_call_in_flight_answers_a_deferred_request_without_a_batch(
        embedder: SentenceTransformerEmbedder, standin: Standin) -> None:
    gate = gate_for(embedder)
    callback = litellm_plugins.install(gate=gate)
    params = {"api_base": standin.url, "api_key": "sk-standin"}
    held = f"inflight-{os.getpid()}"

    async def scenario() -> tuple[Any, Any]:
        lane = lane_for(gate, standin)
        await litellm.acompletion(**ask("What is the refund policy?"), **params)
        stored = await (await lane.defer(**ask("What is the refund policy?")))
        question = f"Where is my parcel? [hold:{held}]"
        leader = asyncio.create_task(litellm.acompletion(**ask(question), **params))
        await async_wait_for(lambda: standin.held(held) == 1, what="the call in flight")
        deferring = asyncio.create_task(lane.defer(**ask(question)))
        key = canonicalize(ask(question), gate.settings).exact_key
        await async_wait_for(lambda: gate.local_flights.followers(key) == 1, what="the deferred request to join")
        standin.release(held)
        joined = await (await deferring)
        await leader
        lane.close()
        return stored, joined

    try:
        stored, joined = asyncio.run(scenario())
    finally:
        litellm_plugins.uninstall()
    assert callback is not None
    assert stored._hidden_params["thrifty"]["source"] == "exact"
    assert joined._hidden_params["thrifty"]["source"] == "joined"
    assert content(joined) == f"[{MODEL}] Answer to: Where is my parcel?"
    stats = standin.stats()
    assert stats["calls"] == 2 and stats["batch"]["batches"] == 0 and stats["batch"]["lines"] == 0


def test_a_deferred_request_never_gets_another_tenants_answer(embedder: SentenceTransformerEmbedder,
                                                            standin: Standin) -> None:
    gate = gate_for(embedder)
    question = "What is the discount on my plan?"
    litellm_plugins.install(gate=gate)  # as users run it: the lane beside the callback

    async def scenario() -> dict[str, list[Any]]:
        lane = lane_for(gate, standin)
        async with lane:
            first = {t: await lane.defer(**ask(question, t)) for t in ("acme", "globex")}
            await lane.flush()
            answers = {t: [await asyncio.wait_for(f, 30)] for t, f in first.items()}
            for tenant in ("acme", "globex"):
                answers[tenant].append(await (await lane.defer(**ask(question, tenant))))
            initech = await lane.defer(**ask(question, "initech"))
            assert not initech.done()  # queued: no other tenant's entry answers it
            await lane.flush()
            answers["initech"] = [await initech]
        lane.close()
        # asked synchronously through LiteLLM, each tenant gets its own deferred answer from the cache
        for tenant in ("acme", "globex"):
            answers[tenant].append(await litellm.acompletion(**ask(question, tenant), api_base=standin.url,
                                                             api_key="sk-standin"))
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        litellm_plugins.uninstall()
    acme, globex = answers["acme"], answers["globex"]
    assert [r._hidden_params["thrifty"]["decision"] for r in (acme[2], globex[2])] == ["cache_hit"] * 2
    assert acme[2].id == acme[0].id and globex[2].id == globex[0].id
    # two tenants' identical requests never share a batch line or an answer
    assert acme[0].id != globex[0].id
    assert [r._hidden_params["thrifty"]["source"] for r in acme[:2] + globex[:2]] == ["batch", "exact"] * 2
    assert acme[1].id == acme[0].id and globex[1].id == globex[0].id  # each tenant's own answer, from the cache
    assert answers["initech"][0]._hidden_params["thrifty"]["source"] == "batch"  # not another tenant's entry
    stats = standin.stats()
    assert stats["calls"] == 0 and stats["batch"]["batches"] == 2 and stats["batch"]["lines"] == 3


def test_a_batch_held_by_the_provider_is_delivered_when_it_ends(embedder: SentenceTransformerEmbedder,
                                                               standin: Standin) -> None:
    gate = gate_for(embedder)
    held = f"batch-{os.getpid()}"

    async def scenario() -> Any:
        lane = lane_for(gate, standin)
        async with lane:
            future = await lane.defer(**ask(f"Summarise ticket 88. [hold:{held}]"))
            await lane.flush()
            await async_wait_for(lambda: standin.held(held) == 1, what="the batch held in progress")
            assert not future.done() and lane.pending() == {"submitted": 1}
            assert standin.stats()["batch"]["in_progress"] == 1
            standin.release(held)
            response = await asyncio.wait_for(future, 30)
        lane.close()
        return response

    response = asyncio.run(scenario())
    assert content(response) == f"[{MODEL}] Answer to: Summarise ticket 88."


def test_the_lane_sends_a_batch_when_enough_requests_wait_or_the_oldest_waited_long_enough(
        embedder: SentenceTransformerEmbedder, standin: Standin) -> None:
    by_count = gate_for(embedder, batch={"max_batch_size": 2})
    by_age = gate_for(embedder, batch={"max_wait_seconds": 0.2})

    async def scenario() -> None:
        async with lane_for(by_count, standin) as lane:
            futures = [await lane.defer(**ask(q)) for q in ("How do I pay?", "Where is order 9?")]
            await asyncio.wait_for(asyncio.gather(*futures), 30)  # no flush called: two were enough
            assert standin.stats()["batch"]["batches"] == 1
        async with lane_for(by_age, standin) as lane:
            alone = await lane.defer(**ask("What are your opening hours?"))
            await asyncio.wait_for(alone, 30)  # no flush called: it waited max_wait_seconds
        assert standin.stats()["batch"]["batches"] == 2

    asyncio.run(scenario())


def test_a_failed_batch_is_sent_again_and_a_failed_line_fails_its_request(embedder: SentenceTransformerEmbedder,
                                                                         standin: Standin) -> None:
    gate = gate_for(embedder, batch={"max_attempts": 2})

    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        lane = lane_for(gate, standin)
        async with lane:
            expiring = await lane.defer(**ask("Translate this. [batch:expire]"))
            await lane.flush()
            # the expired batch is sent again (once more: max_attempts 2), then its request fails
            await asyncio.wait_for(asyncio.wait([expiring]), 30)
            refused = await lane.defer(**ask("Translate that. [status:400]"))
            await lane.flush()
            await asyncio.wait_for(asyncio.wait([refused]), 30)
            assert lane.pending() == {"failed": 2}
        lane.close()
        return expiring.exception(), refused.exception()

    expired, refused = asyncio.run(scenario())
    assert isinstance(expired, litellm_plugins.BatchLineFailed) and "expired" in str(expired)
    assert isinstance(refused, litellm_plugins.BatchLineFailed) and refused.status_code == 400
    assert standin.stats()["batch"]["batches"] == 3
    failed = [e for e in gate.ledger.events() if e.kind == "call"]
    assert {e.outcome for e in failed} == {"failed"} and all(e.cost == 0 for e in failed)
    assert all(e.detail.startswith("batch: ") for e in failed)
    (_, _, spent, held), = gate.budget.remaining(canonicalize(ask("x"), gate.settings))
    assert spent == 0 and held == 0


def test_the_queue_keeps_no_key_header_or_secret_reference(tmp_path: Path) -> None:
    request = ask("What is the refund policy?", api_key="sk-SECRET-1", api_base="http://x",
                  extra_headers={"Authorization": "Bearer sk-SECRET-2"}, temperature=0)
    request["metadata"].update({"openai_api_key": "sk-SECRET-3", "ref": "os.environ/SECRET_4",
                                "headers": {"Authorization": "Bearer sk-SECRET-5"}, "agent": "support"})
    kept = storable(request)
    assert kept["metadata"] == {"tenant": "acme", "agent": "support", "headers": {}}
    assert set(kept) == {"model", "messages", "metadata", "temperature"}
    with BatchQueue(tmp_path / "q.sqlite3") as queue:
        queue.add(request, scope="s", exact_key="k", joinable=True, model=MODEL)
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"SECRET" not in blob and b"os.environ" not in blob


# ------------------------------------------------------------------ a process killed at every stage
def _worker(folder: Path, url: str, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.Popen([sys.executable, str(WORKER), str(folder), url, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("stage", ["queued", "uploaded", "created", "answered"])
def test_a_process_killed_at_any_stage_loses_nothing_and_sends_nothing_twice(stage: str, standin: Standin,
                                                                            tmp_path: Path) -> None:
    first = _worker(tmp_path, standin.url, f"first:{stage}")
    try:
        wait_for(lambda: (tmp_path / f"at-{stage}").exists() or first.poll() is not None, timeout=60,
                 what=f"the worker to reach {stage}")
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    ids = json.loads((tmp_path / "ids.json").read_text())
    second = _worker(tmp_path, standin.url, "resume")
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    report = json.loads(out)
    questions = ["What is the refund policy?", "Where is order 4471?", "How do I reset my password?",
                 "What is the refund policy?"]
    assert list(report["results"]) == ids
    assert [r["content"] for r in report["results"].values()] == [f"[{MODEL}] Answer to: {q}" for q in questions]
    assert [r["source"] for r in report["results"].values()] == ["batch"] * 3 + ["lane_joined"]
    assert report["hits"] == [True] * 4  # every answer is in the cache
    assert report["counts"] == {"delivered": 4}
    billed = standin.stats()
    assert billed["calls"] == 0
    assert billed["batch"]["batches"] == 1 and billed["batch"]["lines"] == 3  # nothing sent twice
    # killed after its upload, before recording it: the file is uploaded again (files cost nothing); killed
    # after creating the batch, before recording it: the batch is found by its tag, not created again
    assert billed["batch"]["files"] == (2 if stage == "uploaded" else 1)
    events = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    calls = [e for e in events if e["kind"] == "call"]
    assert len(calls) == 3 and {e["detail"] for e in calls} == {"batch"}  # each delivered once
    assert [e["kind"] for e in events].count("joined") == 1
    price = PriceTable().batch_price(MODEL)
    assert price is not None
    assert sum(e["cost"] for e in calls) == pytest.approx(
        billed["batch"]["prompt_tokens"] * price.input_per_token
        + billed["batch"]["completion_tokens"] * price.output_per_token, rel=1e-9)
