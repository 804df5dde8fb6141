"""A cache that checks itself: blocked pairings, wrong-answer reports and shadow audits (issue 16).

The amplification: a semantic cache that pairs a question with the wrong neighbour serves that
wrong answer to every repeat of the question, because the question never gets an entry of its
own. Here the pairing is planted with a verifier that accepts every neighbour; the real embedder
finds the neighbour.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import answer, chat, make_cache, make_gate, request_for
from thrifty.blocks import Block
from thrifty.cache import SemanticCache
from thrifty.cli import main
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.ledger import read_events, summarize
from thrifty.settings import ThriftySettings
from thrifty.verifier import Verdict

STORED = "How do I reset my password?"
STORED_ANSWER = "Click 'Forgot password' on the sign-in page and follow the link in the email."
WRONGLY_PAIRED = "How do I reset my colleague's password?"  # cosine 0.72 to STORED
RIGHT_ANSWER = "Only a workspace administrator can reset another user's password, from the Admin console."
NEAR_COPY = "How can I reset my colleague's password?"  # cosine 0.997 to WRONGLY_PAIRED
PARAPHRASE = "How can I reset my password?"  # cosine 0.71 to WRONGLY_PAIRED: not a near copy of it
TRUTH = {STORED: STORED_ANSWER, WRONGLY_PAIRED: RIGHT_ANSWER, NEAR_COPY: RIGHT_ANSWER, PARAPHRASE: STORED_ANSWER}


class AcceptsEveryNeighbour:
    """A verifier that makes the mistake on purpose: every near neighbour is "the same request"."""

    def verify(self, query: str, candidate: str, similarity: float) -> Verdict:
        return Verdict(True, "planted")


class Upstream:
    """The model: answers each question rightly (``TRUTH``), costing ``cost``; counts its calls.
    With ``hold``, every call waits until :meth:`release` (an event the test controls)."""

    def __init__(self, *, cost: float = 0.001, hold: bool = False, fail: bool = False) -> None:
        self.cost = cost
        self.fail = fail
        self.asked: list[str] = []
        self.called = asyncio.Event() if hold else None
        self._go = asyncio.Event() if hold else None

    def text_of(self, request: dict[str, Any]) -> str:
        return str(request["messages"][-1]["content"])

    def answer(self, request: dict[str, Any]) -> Completion:
        question = self.text_of(request)
        self.asked.append(question)
        if self.fail:
            raise ConnectionError("upstream down")
        return answer(TRUTH[question], cost=self.cost, model=request.get("model"))

    async def __call__(self, request: dict[str, Any]) -> Completion:
        if self.called is not None and self._go is not None:
            self.called.set()
            await self._go.wait()
        return self.answer(request)

    def release(self) -> None:
        assert self._go is not None
        self._go.set()


def planted_gate(embedder: SentenceTransformerEmbedder, **cache: Any) -> Thrifty:
    """A gate whose cache holds STORED's answer and pairs WRONGLY_PAIRED with it."""
    gate = make_gate(embedder, verifier=AcceptsEveryNeighbour(), cache=cache)
    gate.store(chat(STORED), answer(STORED_ANSWER, cost=0.002))
    return gate


def text(result: Completion | Reused) -> str:
    if isinstance(result, Reused):
        return str(result.answer["content"])
    return result.text


async def repeats(gate: Thrifty, upstream: Upstream, question: str, times: int) -> list[str]:
    """``times`` requests of ``question`` one after the other, each one's audit ended before the next."""
    served = []
    for _ in range(times):
        served.append(text(await gate.acall(chat(question), upstream)))
        await gate.asettle_audits()
    return served


# ---------------------------------------------------------------------------- the amplification, and a report
def test_a_wrong_pairing_is_served_on_every_repeat(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder), Upstream()
    assert asyncio.run(repeats(gate, upstream, WRONGLY_PAIRED, 5)) == [STORED_ANSWER] * 5
    assert upstream.asked == []  # never asked: the question never gets an entry of its own


def test_a_report_ends_it_at_once(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder), Upstream()

    async def scenario() -> list[str]:
        assert await repeats(gate, upstream, WRONGLY_PAIRED, 3) == [STORED_ANSWER] * 3
        reported = await gate.areport_wrong(chat(WRONGLY_PAIRED))
        assert (reported.action, reported.tier, reported.detail) == ("blocked", "semantic", STORED)
        return await repeats(gate, upstream, WRONGLY_PAIRED, 5)

    assert asyncio.run(scenario()) == [RIGHT_ANSWER] * 5  # zero wrong after the report
    assert upstream.asked == [WRONGLY_PAIRED]  # once; its answer is then its own entry
    assert asyncio.run(repeats(gate, upstream, STORED, 1)) == [STORED_ANSWER]  # the entry itself is kept
    reports = [e for e in gate.ledger.events() if e.kind == "reported_wrong"]
    assert [(e.outcome, e.detail) for e in reports] == [("blocked", STORED)]


def test_the_cache_refuses_a_blocked_pairing_and_says_so(embedder: SentenceTransformerEmbedder) -> None:
    cache = make_cache(embedder, verifier=AcceptsEveryNeighbour())
    cache.store(request_for(cache, STORED), answer(STORED_ANSWER))
    stored, asked = request_for(cache, STORED), request_for(cache, WRONGLY_PAIRED)
    assert cache.lookup(asked).hit
    assert cache.block(Block(stored.exact_key, asked.exact_key, STORED, WRONGLY_PAIRED))
    found = cache.lookup(asked)
    assert (found.hit, found.reason) == (False, "refused")
    assert [(r.text, r.reason) for r in found.refused] == [(STORED, "blocked")]
    assert cache.stats.refusal_reasons["blocked"] == 1


def test_near_copies_of_a_blocked_request_are_refused_too(embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder)
    gate.report_wrong(chat(WRONGLY_PAIRED))
    near = gate.cache.lookup(request_for(gate.cache, NEAR_COPY))
    assert not near.hit and [r.reason for r in near.refused] == ["blocked_near"]
    assert near.refused[0].detail.startswith("cos=0.99")
    paraphrase = gate.cache.lookup(request_for(gate.cache, PARAPHRASE))  # close to the entry, not to the block
    assert paraphrase.hit and paraphrase.tier == "semantic"
    exact_only = make_gate(embedder, verifier=AcceptsEveryNeighbour(), cache={"block_near": 1.01})
    exact_only.store(chat(STORED), answer(STORED_ANSWER))
    exact_only.report_wrong(chat(WRONGLY_PAIRED))
    assert exact_only.cache.lookup(request_for(exact_only.cache, NEAR_COPY)).hit


def test_a_report_evicts_an_answer_served_from_its_own_entry(embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder)
    assert isinstance(gate.begin(chat(STORED)), Reused)
    reported = gate.report_wrong(chat(STORED))
    assert (reported.action, reported.tier) == ("evicted", "exact")
    assert len(gate.cache.storage) == 0
    assert gate.report_wrong(chat(STORED)).action == "nothing"  # nothing serves it any more


def test_a_report_the_gate_does_not_remember_undoes_what_would_be_served(
        embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder, remember_served=0)
    assert isinstance(gate.begin(chat(WRONGLY_PAIRED)), Reused)
    assert gate.report_wrong(chat(WRONGLY_PAIRED)).action == "blocked"
    assert not gate.cache.lookup(request_for(gate.cache, WRONGLY_PAIRED)).hit


def test_blocks_persist_with_the_embedded_store_file(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    with make_cache(embedder, path=path, verifier=AcceptsEveryNeighbour()) as cache:
        cache.store(request_for(cache, STORED), answer(STORED_ANSWER))
    # a file written before blocks existed has no table for them: it stays readable and gains one
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE blocks")
    with make_cache(embedder, path=path, verifier=AcceptsEveryNeighbour()) as cache:
        assert cache.lookup(request_for(cache, WRONGLY_PAIRED)).hit
        stored, asked = request_for(cache, STORED), request_for(cache, WRONGLY_PAIRED)
        assert cache.block(Block(stored.exact_key, asked.exact_key, STORED, WRONGLY_PAIRED, "audit", 1.0))
    reopened = EmbeddedStore(path)
    assert reopened.blocks([stored.exact_key]) == [Block(stored.exact_key, asked.exact_key, STORED, WRONGLY_PAIRED,
                                                         "audit", 1.0)]
    with make_cache(embedder, path=path, verifier=AcceptsEveryNeighbour()) as cache:
        assert [r.reason for r in cache.lookup(request_for(cache, WRONGLY_PAIRED)).refused] == ["blocked"]
        assert cache.lookup(request_for(cache, STORED)).hit
        cache.clear()
        assert cache.storage.blocks([stored.exact_key]) == []
    reopened.close()


def test_blocks_are_shared_through_redis(embedder: SentenceTransformerEmbedder, redis_url: str,
                                         redis_prefix: str) -> None:
    from thrifty.redis_store import RedisStore

    settings = ThriftySettings(cache={"backend": "redis"}, redis={"key_prefix": redis_prefix}, ledger={"path": None})

    def cache() -> SemanticCache:
        return SemanticCache(settings, embedder=embedder, verifier=AcceptsEveryNeighbour(),
                             store=RedisStore(redis_url, settings=settings.redis))

    one, other = cache(), cache()  # two processes, say
    one.store(request_for(one, STORED), answer(STORED_ANSWER))
    stored, asked = request_for(one, STORED), request_for(one, WRONGLY_PAIRED)
    assert other.lookup(asked).hit
    assert one.block(Block(stored.exact_key, asked.exact_key, STORED, WRONGLY_PAIRED, "audit", 1.0))
    assert [r.reason for r in other.lookup(asked).refused] == ["blocked"]
    assert [r.reason for r in other.lookup(request_for(other, NEAR_COPY)).refused] == ["blocked_near"]

    async def in_a_loop() -> None:
        assert [r.reason for r in (await other.alookup(asked)).refused] == ["blocked"]
        await other.ablock(Block(stored.exact_key, "another key", STORED, "Another question?"))
        assert len(await other.storage.ablocks([stored.exact_key])) == 2

    asyncio.run(in_a_loop())
    other.clear()
    assert one.storage.blocks([stored.exact_key]) == []
    one.close()
    other.close()


# ---------------------------------------------------------------------------- shadow audits
def test_an_audit_of_the_first_hit_ends_it_at_once(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1), Upstream()
    served = asyncio.run(repeats(gate, upstream, WRONGLY_PAIRED, 4))
    assert served == [STORED_ANSWER] + [RIGHT_ANSWER] * 3  # one wrong: the hit that was audited
    assert upstream.asked == [WRONGLY_PAIRED]  # the audit; its fresh answer then answers every repeat
    audits = [e for e in gate.ledger.events() if e.kind == "audit"]
    assert [(e.outcome, e.cost) for e in audits] == [("disagree", 0.001)]
    assert audits[0].detail.startswith("answers cos=")
    stats = gate.auditor.stats
    assert (stats.started, stats.disagreements, stats.agreements, stats.spent) == (1, 1, 0, 0.001)
    near = gate.cache.lookup(request_for(gate.cache, NEAR_COPY))  # near copies now find the fresh answer
    assert near.hit and near.answer == {"role": "assistant", "content": RIGHT_ANSWER}


def test_an_audit_that_agrees_changes_nothing(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1), Upstream()
    assert asyncio.run(repeats(gate, upstream, PARAPHRASE, 3)) == [STORED_ANSWER] * 3
    assert upstream.asked == [PARAPHRASE]  # the first hit only; the rest at 2%, and the draw said no
    assert gate.auditor.stats.agreements == 1
    assert [e.outcome for e in gate.ledger.events() if e.kind == "audit"] == ["agree"]
    assert gate.cache.lookup(request_for(gate.cache, PARAPHRASE)).tier == "semantic"


def geometric_draws(seed: int, rate: float) -> int:
    """How many hits a gate seeded ``seed`` serves before its draw picks one for an audit, that one included."""
    rng, draws = random.Random(seed), 1
    while rng.random() >= rate:
        draws += 1
    return draws


def test_audits_end_it_within_one_over_the_rate_repeats_in_expectation(
        embedder: SentenceTransformerEmbedder) -> None:
    rate = 0.25

    async def wrong_answers(seed: int) -> int:
        gate, upstream = planted_gate(embedder, audit_rate=rate, audit_first=0, audit_seed=seed), Upstream()
        served = await repeats(gate, upstream, WRONGLY_PAIRED, 40)
        wrong = served.count(STORED_ANSWER)
        assert served == [STORED_ANSWER] * wrong + [RIGHT_ANSWER] * (40 - wrong)  # once ended, ended for good
        return wrong

    wrong = [asyncio.run(wrong_answers(seed)) for seed in range(6)]
    assert wrong == [geometric_draws(seed, rate) for seed in range(6)]  # the seeded draw decides, nothing else
    # ...and the draw's expected count of wrong answers is 1 / rate
    assert sum(geometric_draws(seed, rate) for seed in range(2000)) / 2000 == pytest.approx(1 / rate, rel=0.05)


def test_an_audit_never_delays_its_caller(embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1)

    async def scenario() -> None:
        upstream = Upstream(hold=True)
        served = await gate.acall(chat(WRONGLY_PAIRED), upstream)
        assert isinstance(served, Reused) and text(served) == STORED_ANSWER  # while the audit has not even begun
        assert upstream.called is not None
        await upstream.called.wait()  # the audit's call is now held upstream...
        assert len(gate._audit_tasks) == 1
        again = await gate.acall(chat(WRONGLY_PAIRED), upstream)  # ...and callers are still answered at once
        assert isinstance(again, Reused)
        upstream.release()
        await gate.asettle_audits()
        assert text(await gate.acall(chat(WRONGLY_PAIRED), upstream)) == RIGHT_ANSWER

    asyncio.run(scenario())


def test_a_failing_audit_fails_nobody(embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1)
    served = asyncio.run(repeats(gate, Upstream(fail=True), WRONGLY_PAIRED, 2))
    assert served == [STORED_ANSWER] * 2
    assert [e.outcome for e in gate.ledger.events() if e.kind == "audit"] == ["failed"]
    assert gate.auditor.stats.failures == 1 and gate.auditor._reserved == 0.0


@pytest.mark.parametrize(("why", "stored", "asked"), [
    ("no_store", {}, {"metadata": {"thrifty": {"no_store": True}}}),
    ("personal", {"user": "u1"}, {"user": "u1"}),
    ("temperature", {"temperature": 1.0}, {"temperature": 1.0}),
])
def test_audits_never_run_for_no_store_personal_or_hot_requests(
        embedder: SentenceTransformerEmbedder, why: str, stored: dict[str, Any], asked: dict[str, Any]) -> None:
    gate = make_gate(embedder, verifier=AcceptsEveryNeighbour(), cache={"audit_rate": 1.0, "audit_first": 5})
    mail = " My address is jane@example.com." if why == "personal" else ""
    assert gate.store(chat(STORED + mail, **stored), answer(STORED_ANSWER)).stored
    upstream = Upstream()
    served = asyncio.run(_ask(gate, upstream, chat(WRONGLY_PAIRED + mail, **asked)))
    assert isinstance(served, Reused) and served.source == "semantic"
    assert upstream.asked == []
    assert gate.auditor.stats.skipped[why] == 1


async def _ask(gate: Thrifty, upstream: Upstream, request: dict[str, Any]) -> Completion | Reused:
    result = await gate.acall(request, upstream)
    await gate.asettle_audits()
    return result


def test_exact_hits_are_never_audited(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder, audit_rate=1.0, audit_first=5), Upstream()
    assert asyncio.run(repeats(gate, upstream, STORED, 3)) == [STORED_ANSWER] * 3
    assert upstream.asked == [] and gate.auditor.stats.started == 0


def test_audits_never_exceed_their_budget(embedder: SentenceTransformerEmbedder) -> None:
    # no price known for the model: an audit reserves the stored answer's cost, 0.002
    gate = planted_gate(embedder, audit_rate=1.0, audit_first=0, audit_budget_usd=0.007)

    async def scenario() -> None:
        upstream = Upstream(cost=0.002, hold=True)
        for _ in range(6):  # six hits at once, each chosen for an audit
            await gate.acall(chat(PARAPHRASE), upstream)
        upstream.release()
        await gate.asettle_audits()

    asyncio.run(scenario())
    stats = gate.auditor.stats
    assert (stats.started, stats.skipped["budget"]) == (3, 3)
    assert stats.spent == pytest.approx(0.006) and stats.spent <= 0.007
    assert sum(e.cost for e in gate.ledger.events() if e.kind == "audit") == pytest.approx(0.006)


def test_the_sync_api_audits_on_a_thread(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1), Upstream()
    first = gate.call(chat(WRONGLY_PAIRED), upstream.answer)
    assert text(first) == STORED_ANSWER
    gate.settle_audits()
    assert text(gate.call(chat(WRONGLY_PAIRED), upstream.answer)) == RIGHT_ANSWER
    assert upstream.asked == [WRONGLY_PAIRED]


def test_an_audit_that_cannot_start_fails_nobody(embedder: SentenceTransformerEmbedder) -> None:
    gate = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1)
    reused = gate.begin(chat(WRONGLY_PAIRED))
    assert isinstance(reused, Reused)
    assert gate.aaudit(chat(WRONGLY_PAIRED), reused, Upstream()) is False  # no event loop runs here
    assert gate.auditor.stats.skipped["not_started"] == 1


def test_audits_are_off_by_default(embedder: SentenceTransformerEmbedder) -> None:
    gate, upstream = planted_gate(embedder), Upstream()
    asyncio.run(repeats(gate, upstream, WRONGLY_PAIRED, 3))
    assert upstream.asked == [] and gate.auditor.stats.started == 0


# ---------------------------------------------------------------------------- the ledger and the report
def test_the_report_shows_the_audit_line(embedder: SentenceTransformerEmbedder, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    gate, upstream = planted_gate(embedder, audit_rate=0.02, audit_first=1, audit_seed=1), Upstream()
    asyncio.run(repeats(gate, upstream, WRONGLY_PAIRED, 2))
    asyncio.run(repeats(gate, upstream, PARAPHRASE, 1))
    gate.report_wrong(chat(PARAPHRASE))
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, [asdict(e) for e in gate.ledger.events()] + [{"kind": "from_the_future", "at": 0.0}])
    totals = summarize(read_events(path))
    assert (totals.audits, totals.audit_disagreements, totals.reported_wrong) == (2, 1, 1)
    assert totals.audit_cost == pytest.approx(0.002)
    assert totals.calls == 0  # audits are counted apart from the calls callers waited for
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "audits: 2 calls, $0.002000, 1 disagreements" in out
    assert "reported wrong: 1 answers" in out
    assert main(["report", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["audits"] == 2
    assert main(["report", str(path), "--html", str(tmp_path / "report.html")]) == 0
    assert "1 disagreements" in (tmp_path / "report.html").read_text(encoding="utf-8")


def write_ledger(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
