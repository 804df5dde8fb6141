"""Budgets: reserve the worst case, settle the real cost, never overspend - in one process and
across processes on Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Clock, answer, chat, make_gate, wait_for
from thrifty.budget import Budget, BudgetExceeded, MemoryBudgetStore
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.pricing import PriceTable
from thrifty.redis_budget import RedisBudgetStore
from thrifty.request import canonicalize
from thrifty.settings import BudgetSettings, ModelPrice, RedisSettings
from thrifty.ticket import Ticket
from thrifty.tokens import prompt_tokens

PRICES = PriceTable({"cheap-model": ModelPrice(input_per_token=1e-6, output_per_token=2e-6),
                     "big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
WORKER = Path(__file__).with_name("budget_worker.py")


def budget(limits: list[dict[str, Any]], *, store: Any = None, clock: Any = None, ttl: float = 600) -> Budget:
    kwargs: dict[str, Any] = {"store": store}
    if clock is not None:
        kwargs["clock"] = clock
    return Budget(BudgetSettings(limits=limits, reservation_ttl=ttl), PRICES, **kwargs)  # type: ignore[arg-type]


def req(text: str = "What is the refund policy?", **extra: Any) -> dict[str, Any]:
    return chat(text, model="big-model", max_tokens=100, **extra)


def test_worst_case_is_prompt_tokens_at_input_price_plus_max_output_at_output_price() -> None:
    b = budget([])
    request = req()
    expected = prompt_tokens(request, "big-model") * 1e-5 + 100 * 3e-5
    assert b.worst_case(request, "big-model") == pytest.approx(expected)
    assert b.worst_case({**request, "n": 3}, "big-model") == pytest.approx(expected + 200 * 3e-5)
    assert b.worst_case(request, "unknown-model") is None  # unknown: a limit cannot hold it


def test_reserve_settle_release() -> None:
    b = budget([{"scope": "tenant", "usd": 0.01}])
    canon = canonicalize(req(metadata={"tenant": "acme"}))
    first = b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")  # ~0.0032 reserved
    second = b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")
    b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")
    with pytest.raises(BudgetExceeded) as refused:
        b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")
    message = str(refused.value)
    assert "tenant 'acme'" in message and "limit $0.0100" in message and "could cost up to" in message
    b.settle(first, 0.0001)   # the real cost was far below the worst case: room again
    b.release(second)
    b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")
    b.settle(first, 5.0)  # a second settlement is ignored
    (scope, _, spent, reserved), = b.remaining(canon)
    assert scope == "tenant 'acme'" and spent == pytest.approx(0.0001) and reserved > 0


def test_limits_are_checked_together_or_not_at_all() -> None:
    b = budget([{"scope": "tenant", "usd": 1.0}, {"scope": "workflow", "usd": 0.004}])
    canon = canonicalize(req(metadata={"tenant": "acme", "workflow_id": "w1"}))
    b.reserve(req(), canon, "big-model")
    with pytest.raises(BudgetExceeded, match="workflow 'w1'"):
        b.reserve(req(), canon, "big-model")
    (_, _, _, t_reserved), (_, _, _, w_reserved) = b.remaining(canon)
    assert t_reserved == pytest.approx(w_reserved)  # the refused call charged neither


def test_per_request_limit() -> None:
    b = budget([{"scope": "request", "usd": 0.001}])
    with pytest.raises(BudgetExceeded, match="one request"):
        b.reserve(req(), canonicalize(req()), "big-model")
    b.reserve(req(), canonicalize(req()), "cheap-model")


def test_rolling_windows_and_lapsed_reservations() -> None:
    clock = Clock(1_000_000.0)
    b = budget([{"scope": "global", "usd": 0.005, "window": "hour"}], clock=clock, ttl=60)
    canon = canonicalize(req())
    b.settle(b.reserve(req(), canon, "big-model"), 0.004)
    with pytest.raises(BudgetExceeded):
        b.reserve(req(), canon, "big-model")
    clock.now += 3601  # the spend left the window
    crashed = b.reserve(req(), canon, "big-model")  # a caller that will never settle
    assert crashed.amount > 0
    with pytest.raises(BudgetExceeded):
        b.reserve(req(), canon, "big-model")
    clock.now += 61  # its reservation lapsed
    b.reserve(req(), canon, "big-model")


def test_scopes_that_do_not_apply_charge_nothing() -> None:
    b = budget([{"scope": "tenant", "usd": 0.000001}, {"scope": "user", "usd": 0.000001}])
    assert b.charges(canonicalize(req())) == []
    b.reserve(req(), canonicalize(req()), "big-model")


def overspend_attempt(b: Budget, calls: int, real_cost: float) -> tuple[int, int, float]:
    """``calls`` threads reserving and settling at once against ``b``; (ok, refused, settled)."""
    ok = refused = 0
    lock = threading.Lock()
    barrier = threading.Barrier(calls)
    canon = canonicalize(req(metadata={"tenant": "acme"}))
    promised = b.worst_case(req(metadata={"tenant": "acme"}), "big-model")  # what a reservation promises
    assert promised is not None and real_cost <= promised

    def one() -> None:
        nonlocal ok, refused
        barrier.wait()
        try:
            reservation = b.reserve(req(metadata={"tenant": "acme"}), canon, "big-model")
        except BudgetExceeded:
            with lock:
                refused += 1
            return
        b.settle(reservation, real_cost)
        with lock:
            ok += 1

    threads = [threading.Thread(target=one) for _ in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, _ = b.store.usage(b.charges(canon)[0], b.clock())
    return ok, refused, spent


def test_500_concurrent_calls_cannot_overspend_in_process() -> None:
    b = budget([{"scope": "tenant", "usd": 0.5}])
    ok, refused, spent = overspend_attempt(b, 500, real_cost=0.003)
    assert ok + refused == 500 and refused > 0
    assert spent <= 0.5 + 1e-9


def test_the_redis_store_cannot_be_overspent_either(redis_url: str, redis_prefix: str) -> None:
    store = RedisBudgetStore(redis_url, RedisSettings(key_prefix=redis_prefix, operation_timeout=5))
    b = budget([{"scope": "tenant", "usd": 0.5}], store=store)
    ok, refused, spent = overspend_attempt(b, 200, real_cost=0.003)
    assert ok + refused == 200 and refused > 0 and spent <= 0.5 + 1e-9
    assert spent == pytest.approx(ok * 0.003) and not store._local_ids  # every book kept in Redis


def test_while_redis_is_out_each_process_still_holds_the_limit() -> None:
    store = RedisBudgetStore("redis://127.0.0.1:1", RedisSettings(connect_timeout=0.05, operation_timeout=0.05))
    b = budget([{"scope": "tenant", "usd": 0.5}], store=store)
    ok, refused, spent = overspend_attempt(b, 300, real_cost=0.003)
    assert ok + refused == 300 and refused > 0 and spent <= 0.5 + 1e-9
    assert spent == pytest.approx(ok * 0.003)


def test_redis_windows_and_lapses(redis_url: str, redis_prefix: str) -> None:
    clock = Clock(2_000_000.0)
    store = RedisBudgetStore(redis_url, RedisSettings(key_prefix=redis_prefix, operation_timeout=5))
    b = budget([{"scope": "global", "usd": 0.005, "window": "hour"}], store=store, clock=clock, ttl=60)
    canon = canonicalize(req())
    b.settle(b.reserve(req(), canon, "big-model"), 0.004)
    with pytest.raises(BudgetExceeded):
        b.reserve(req(), canon, "big-model")
    clock.now += 3601
    b.reserve(req(), canon, "big-model")  # never settled: a crash
    with pytest.raises(BudgetExceeded):
        b.reserve(req(), canon, "big-model")
    clock.now += 61
    b.reserve(req(), canon, "big-model")


def test_four_processes_on_redis_cannot_overspend(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    procs = [subprocess.Popen([sys.executable, str(WORKER), redis_url, redis_prefix, "125"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(4)]
    wait_for(lambda: int(client.get(f"{redis_prefix}:ready") or 0) == 4, timeout=120, what="4 workers ready")
    client.set(f"{redis_prefix}:go", 1)
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    ok = sum(o["ok"] for o in outputs)
    refused = sum(o["refused"] for o in outputs)
    assert ok + refused == 500 and refused > 0
    store = RedisBudgetStore(redis_url, RedisSettings(key_prefix=redis_prefix, operation_timeout=5))
    b = budget([{"scope": "tenant", "usd": 0.5}], store=store)
    spent, reserved = store.usage(b.charges(canonicalize(req(metadata={"tenant": "acme"})))[0], b.clock())
    assert spent <= 0.5 + 1e-9 and reserved == pytest.approx(0.0, abs=1e-9)
    assert all("would be exceeded" in m for o in outputs for m in o["messages"])


TIERS = [{"name": "cheap", "model": "cheap-model"}, {"name": "premium", "model": "big-model"}]


def gate_with(embedder: SentenceTransformerEmbedder, policy: str, usd: float) -> Thrifty:
    return make_gate(embedder, budget={"limits": [{"scope": "tenant", "usd": usd, "policy": policy}]},
                     router={"enabled": True, "tiers": TIERS, "thresholds": [0.0]},
                     prices={"cheap-model": {"input_per_token": 1e-6, "output_per_token": 2e-6},
                             "big-model": {"input_per_token": 1e-5, "output_per_token": 3e-5}})


def call(gate: Thrifty, text: str, models: list[str]) -> Completion | Reused:
    def upstream(request: dict[str, Any]) -> Completion:
        models.append(request["model"])
        return answer(f"answer to {text}", cost=0.002)

    return gate.call(chat(text, model="auto", max_tokens=100, metadata={"tenant": "acme"}), upstream)


def test_policy_raise(embedder: SentenceTransformerEmbedder) -> None:
    gate, models = gate_with(embedder, "raise", 0.005), list[str]()
    call(gate, "What is the refund policy?", models)
    with pytest.raises(BudgetExceeded, match="tenant 'acme'"):
        call(gate, "How do I reset my password?", models)
    assert isinstance(call(gate, "What is the refund policy?", models), Reused)  # cache hits still served
    assert gate.ledger.totals().budget_refusals == 1


def test_policy_downgrade_picks_a_cheaper_tier_that_fits(embedder: SentenceTransformerEmbedder) -> None:
    gate, models = gate_with(embedder, "downgrade", 0.005), list[str]()
    call(gate, "What is the refund policy?", models)
    call(gate, "How do I reset my password?", models)
    assert models == ["big-model", "cheap-model"]


def test_policy_cache_only(embedder: SentenceTransformerEmbedder) -> None:
    gate, models = gate_with(embedder, "cache_only", 0.005), list[str]()
    call(gate, "What is the refund policy?", models)
    assert isinstance(call(gate, "Can you tell me the refund policy?", models), Reused)
    with pytest.raises(BudgetExceeded, match="only cached answers"):
        call(gate, "How do I reset my password?", models)


def test_a_failed_call_releases_its_reservation(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder, "raise", 0.004)

    def broken(request: dict[str, Any]) -> Completion:
        raise TimeoutError("upstream timed out")

    for _ in range(3):  # each would reserve ~0.0032: only possible if each failure released
        with pytest.raises(TimeoutError):
            gate.call(chat("What is the refund policy?", model="auto", max_tokens=100, metadata={"tenant": "acme"}),
                      broken)


def test_concurrent_async_calls_through_the_gate_cannot_overspend(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder, "raise", 0.05)
    gate.settings.dedup.enabled = False

    async def upstream(request: dict[str, Any]) -> Completion:
        await asyncio.sleep(0.01)  # a real answer: within the reserved worst case, priced per model
        return answer("ok", model=request["model"], prompt_tokens=20, completion_tokens=80)

    async def one(i: int) -> str:
        try:
            await gate.acall(chat(f"Question number {i}?", model="auto", max_tokens=100,
                                  metadata={"tenant": "acme"}), upstream)
            return "ok"
        except BudgetExceeded:
            return "refused"

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(100))))

    outcomes = asyncio.run(scenario())
    assert outcomes.count("refused") > 0
    canon = canonicalize(chat("x", metadata={"tenant": "acme"}))
    spent, reserved = gate.budget.store.usage(gate.budget.charges(canon)[0], gate.budget.clock())
    assert spent <= 0.05 + 1e-9 and reserved == pytest.approx(0.0, abs=1e-12)


def test_memory_store_is_the_default() -> None:
    assert isinstance(budget([]).store, MemoryBudgetStore)


def test_a_rerouted_call_holds_the_new_tiers_worst_case_and_never_more_than_the_budget(
        embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder, "raise", 0.004)
    request = chat("What is the refund policy?", model="auto", max_tokens=100, metadata={"tenant": "acme"})
    charge = gate.budget.charges(canonicalize(request))[0]
    cheap, premium = gate.router.tiers  # type: ignore[union-attr]

    first = gate.begin(request)
    assert isinstance(first, Ticket) and first.route.tier == premium
    premium_worst = first.reservation.amount  # type: ignore[union-attr]
    assert first.reroute(cheap)  # premium's deployments are down: the cheap tier takes it
    assert first.model == "cheap-model" and first.route.reason == "unavailable"
    cheap_worst = first.reservation.amount  # type: ignore[union-attr]
    assert cheap_worst < premium_worst
    assert gate.budget.store.usage(charge, gate.budget.clock())[1] == pytest.approx(cheap_worst)

    second = gate.begin(chat("How do I reset my password?", model="auto", max_tokens=100,
                             metadata={"tenant": "acme"}))
    assert isinstance(second, Ticket) and second.route.tier == premium
    assert not first.reroute(premium)  # moving up would pass the limit: refused, nothing changes
    assert first.model == "cheap-model" and first.reservation.amount == cheap_worst  # type: ignore[union-attr]
    held = cheap_worst + second.reservation.amount  # type: ignore[union-attr]
    assert gate.budget.store.usage(charge, gate.budget.clock())[1] == pytest.approx(held)
    first.complete(answer("refunds within 30 days", cost=0.0001))
    second.complete(answer("use the link", cost=0.0001))
    assert gate.budget.store.usage(charge, gate.budget.clock()) == pytest.approx((0.0002, 0.0))
