"""Isolation and security (issue 14, item 4): tenants never share a cache entry, a joined call or
a budget - through the core gate, the LiteLLM SDK and the Router, under concurrency; tenant, agent
and model names crafted to match another tenant's in a RediSearch query read nothing of it; no API
key, Authorization header or secret reference is written to the store, the ledger, Redis or a log
line; and the size limits on what one answer or request can put in the shared store.

Calls are kept in flight by the stand-in's ``[hold:name]`` (or a held upstream) until the test has
seen every one of them arrive: the order of events is observed, never timed."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis
from conftest import SYSTEM, Standin, answer, async_wait_for, chat, make_gate, wait_for
from litellm.router import Router
from redis.commands.search.query import Query
from redisvl.query.filter import Tag
from thrifty.budget import BudgetExceeded
from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.redis_store import RedisStore
from thrifty.request import canonicalize
from thrifty.settings import ThriftySettings
from thrifty.ticket import Ticket

import litellm_plugins
from litellm_plugins import CostAwareRouting, ThriftyCallback

MODEL = "openai/gpt-4o-mini"
QUESTION = "How many days do I have to return an unopened item?"
PARAPHRASE = "How many days have I got to return an unopened item?"  # the verifier accepts it

# Tenant, agent and model names that mean something to the RediSearch query syntax, or that
# differ from a legitimate name only by case, space, punctuation or normalisation.
CRAFTED = ["*", "acme*", "a|b", "acme|globex", "{acme}", "@tenant:{acme}", "-acme", "acme -globex", '"acme"',
           "'acme'", "acme\\", "\\*", "acme globex", "ACME", " acme", "(acme)", "%acme%", "$acme", "acme\x00",
           "ünïcødé-テナント-🙂", "acme:*", "~acme", "[acme]", "acme;DROP", "a\nb", "acme,globex", "acme\tglobex"]


def hold(what: str) -> str:
    """A ``[hold:name]`` name of its own: the stand-in remembers a release for the rest of the session."""
    return f"{what}-{uuid.uuid4().hex[:8]}"


def ask(standin: Standin, text: str, tenant: str, **kwargs: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "api_base": standin.url, "api_key": "sk-standin",
            "num_retries": 0, "metadata": {"tenant": tenant}, **kwargs}


def decision(response: Any) -> str:
    return str((response._hidden_params.get("thrifty") or {}).get("decision"))


def per_tenant(gate: Thrifty, field: str) -> dict[str, int]:
    return {str(tenant): getattr(totals, field) for tenant, totals in gate.ledger.by("tenant").items()}


def redis_settings(redis_url: str, prefix: str, **settings: Any) -> ThriftySettings:
    return ThriftySettings(cache={"backend": "redis", **settings.pop("cache", {})},
                           redis={"url": redis_url, "key_prefix": prefix},
                           ledger={"path": None, **settings.pop("ledger", {})}, **settings)


@pytest.fixture(params=["embedded", "redis"])
def sdk(request: pytest.FixtureRequest, embedder: SentenceTransformerEmbedder, tmp_path: Path,
        redis_prefix: str) -> Iterator[ThriftyCallback]:
    """thrifty installed in LiteLLM, on the embedded store or on Redis."""
    if request.param == "redis":
        config = redis_settings(request.getfixturevalue("redis_url"), redis_prefix)
    else:
        config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"},
                                 ledger={"path": None})
    yield litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
    litellm_plugins.uninstall()


# ------------------------------------------------------------------ tenants, through the core gate
def test_concurrent_tenants_get_only_their_own_answers_through_the_gate(embedder: SentenceTransformerEmbedder) -> None:
    """The upstream answers with the tenant of the call that reached it: a join or a hit across
    tenants would hand a caller another tenant's name."""
    tenants = ["acme", *CRAFTED]
    g = make_gate(embedder)
    release = asyncio.Event()
    upstream_calls: list[str] = []

    async def one(tenant: str, text: str) -> tuple[str, str, str]:
        async def upstream(call: dict[str, Any]) -> Completion:
            upstream_calls.append(tenant)
            await release.wait()
            return answer(f"{text} for tenant {tenant!r}", cost=0.001, prompt_tokens=20, completion_tokens=10)

        result = await g.acall(chat(text, metadata={"tenant": tenant}), upstream)
        content = (result.answer if isinstance(result, Reused) else dict(result.answer))["content"]
        source = result.source if isinstance(result, Reused) else "call"
        return tenant, source, str(content)

    async def scenario() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        # three identical requests per tenant, all in flight at once
        first = [asyncio.create_task(one(t, QUESTION)) for t in tenants for _ in range(3)]
        await async_wait_for(lambda: len(upstream_calls) == len(tenants)
                             and sorted(g.local_flights.snapshot().values()) == [2] * len(tenants),
                             what="one call per tenant, each with two followers")
        release.set()
        joined = list(await asyncio.gather(*first))
        # again, and a paraphrase, from every tenant and from tenants that never asked
        second = [one(t, text) for t in [*tenants, "initech", "acme2"] for text in (QUESTION, PARAPHRASE)]
        return joined, list(await asyncio.gather(*second))

    joined, again = asyncio.run(scenario())
    for tenant, _, content in joined + again:
        assert content.endswith(f"for tenant {tenant!r}"), (tenant, content)
    assert sorted(upstream_calls[:len(tenants)]) == sorted(tenants)
    assert sorted(s for t, s, _ in joined if t == "acme") == ["call", "joined", "joined"]
    assert [s for t, s, _ in again if t in tenants] == ["exact", "semantic"] * len(tenants)
    for newcomer in ("initech", "acme2"):  # its paraphrase may find its own first answer, never another's
        assert "call" in [s for t, s, _ in again if t == newcomer]
    assert per_tenant(g, "calls")["acme"] == 1 and per_tenant(g, "joined")["acme"] == 2


def test_tenant_budgets_are_separate_under_concurrency(embedder: SentenceTransformerEmbedder) -> None:
    """Each tenant may reserve three calls' worth; 8 concurrent calls from each of four tenants,
    whose names match each other in a query: each gets exactly its own three, none spends past
    its limit, and no tenant's spending is charged to another."""
    prices = {"big-model": {"input_per_token": 1e-5, "output_per_token": 3e-5}}
    tenants = ["acme", "acme*", "*", "acme|globex"]

    def request(tenant: str, n: int) -> dict[str, Any]:
        return chat(f"Describe product {11 + n}.", model="big-model", max_tokens=300, metadata={"tenant": tenant})

    probe = make_gate(embedder, prices=prices, budget={"limits": [{"scope": "tenant", "usd": 100.0}]})
    ticket = probe.begin(request("probe", 0))
    assert isinstance(ticket, Ticket) and ticket.reservation is not None
    limit = ticket.reservation.amount * 3.5
    g = make_gate(embedder, prices=prices, budget={"limits": [{"scope": "tenant", "usd": limit}]})
    release = asyncio.Event()
    arrived: list[str] = []

    async def one(tenant: str, n: int) -> str:
        async def upstream(call: dict[str, Any]) -> Completion:
            arrived.append(tenant)
            await release.wait()
            return answer(f"product {11 + n} for {tenant}", prompt_tokens=30, completion_tokens=300)

        try:
            await g.acall(request(tenant, n), upstream)
        except BudgetExceeded:
            return "refused"
        return "call"

    async def scenario() -> list[str]:
        tasks = [asyncio.create_task(one(t, n)) for n in range(8) for t in tenants]
        await async_wait_for(lambda: len(arrived) + g.ledger.totals().budget_refusals == len(tasks),
                             what="every call reserved or refused")
        release.set()
        return list(await asyncio.gather(*tasks))

    asyncio.run(scenario())
    assert sorted(arrived) == sorted(tenants * 3)
    assert per_tenant(g, "calls") == {t: 3 for t in tenants}
    assert per_tenant(g, "budget_refusals") == {t: 5 for t in tenants}
    for tenant, totals in g.ledger.by("tenant").items():
        assert 0 < totals.cost <= limit, tenant


# ------------------------------------------------------------------ tenants, through LiteLLM
def test_sdk_tenants_asking_the_same_question_at_once_are_never_joined(standin: Standin,
                                                                       sdk: ThriftyCallback) -> None:
    tenants = ["acme", "globex", "*", "acme|globex", "{acme}", "ACME", "ünï-テナント", '"acme"']
    held = hold("iso-sdk")

    async def scenario() -> tuple[list[Any], list[Any]]:
        first = [asyncio.create_task(litellm.acompletion(**ask(standin, f"{QUESTION} [hold:{held}]", t)))
                 for t in tenants for _ in range(3)]
        await async_wait_for(lambda: standin.held(held) == len(tenants)
                             and sorted(sdk.gate.local_flights.snapshot().values()) == [2] * len(tenants),
                             what="one upstream call per tenant, each with two followers")
        standin.release(held)
        joined = list(await asyncio.gather(*first))
        second = [litellm.acompletion(**ask(standin, f"{QUESTION} [hold:{held}]", t))
                  for t in [*tenants, "initech", "acme "]]
        return joined, list(await asyncio.gather(*second))

    joined, again = asyncio.run(scenario())
    assert standin.calls() == len(tenants) + 2  # one per tenant, then the two new tenants
    for i, tenant in enumerate(tenants):
        assert sorted(decision(r) for r in joined[3 * i:3 * i + 3]) == ["call", "joined", "joined"], tenant
    assert [decision(r) for r in again] == ["cache_hit"] * len(tenants) + ["call", "call"]
    calls = per_tenant(sdk.gate, "calls")
    assert calls == {**{t: 1 for t in tenants}, "initech": 1, "acme ": 1}
    assert per_tenant(sdk.gate, "hits") == {**{t: 1 for t in tenants}, "initech": 0, "acme ": 0}


def test_router_tenants_are_never_joined_nor_served_each_others_entries(standin: Standin,
                                                                        embedder: SentenceTransformerEmbedder,
                                                                        tmp_path: Path) -> None:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"}, ledger={"path": None})
    callback = litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
    params = {"api_base": standin.url, "api_key": "sk-standin"}
    router = Router(model_list=[
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o", **params},
         "model_info": {"id": "premium-1", "thrifty_tier": "premium"}},
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o-mini", **params},
         "model_info": {"id": "cheap-1", "thrifty_tier": "cheap"}},
    ], num_retries=0)
    CostAwareRouting.install(router, callback=callback)
    tenants = ["acme", "*", "a|b", "{a}"]
    held = hold("iso-router")

    def routed(text: str, tenant: str) -> Any:
        return router.acompletion(model="auto", messages=[{"role": "user", "content": text}],
                                  metadata={"tenant": tenant})

    async def scenario() -> tuple[list[Any], list[Any]]:
        first = [asyncio.create_task(routed(f"{QUESTION} [hold:{held}]", t)) for t in tenants for _ in range(2)]
        await async_wait_for(lambda: standin.held(held) == len(tenants)
                             and sorted(callback.gate.local_flights.snapshot().values()) == [1] * len(tenants),
                             what="one upstream call per tenant, each with one follower")
        standin.release(held)
        joined = list(await asyncio.gather(*first))
        again = [routed(f"{QUESTION} [hold:{held}]", t) for t in [*tenants, "b"]]
        return joined, list(await asyncio.gather(*again))

    try:
        joined, again = asyncio.run(scenario())
    finally:
        litellm_plugins.uninstall()
    assert standin.calls() == len(tenants) + 1
    assert sorted(decision(r) for r in joined) == sorted(["call", "joined"] * len(tenants))
    assert [decision(r) for r in again] == ["cache_hit"] * len(tenants) + ["call"]
    assert per_tenant(callback.gate, "calls") == {**{t: 1 for t in tenants}, "b": 1}


# ------------------------------------------------------------------ RediSearch query injection
def test_crafted_tenant_agent_and_model_names_never_read_another_tenants_redis_entries(
        embedder: SentenceTransformerEmbedder, redis_url: str, redis_prefix: str) -> None:
    settings = redis_settings(redis_url, redis_prefix)
    victims = ["acme", "a", "a|b", "*", "{acme}"]
    attackers = [name for name in CRAFTED if name not in victims] + ["b", "globex"]
    with SemanticCache(settings, embedder=embedder) as cache:
        def request(tenant: str, text: str = QUESTION, agent: str = "billing", model: str = "gpt-4o-mini") -> Any:
            return canonicalize(chat(text, model=model, metadata={"tenant": tenant, "agent": agent}), settings)

        for victim in victims:
            assert cache.store(request(victim), answer(f"secret of {victim}")).stored
        reads = hits = 0
        for attacker in attackers:
            for agent in ("billing", attacker):
                for model in ("gpt-4o-mini", attacker):
                    for text in (QUESTION, PARAPHRASE):
                        found = cache.lookup(request(attacker, text, agent, model))
                        reads += 1
                        hits += found.hit
                        assert not found.hit, (attacker, agent, model, text, found.answer)
                        assert found.reason in ("no_match", "refused"), found.reason
        # the names that mean something to the query syntax are also the victims' own: each reads its own
        for victim in victims:
            for text, tier in ((QUESTION, "exact"), (PARAPHRASE, "semantic")):
                found = cache.lookup(request(victim, text, agent="*"))
                assert found.hit and found.tier == tier and found.answer is not None
                assert found.answer["content"] == f"secret of {victim}"
        # attackers store too: nothing raises, and the victims still read only their own
        for attacker in attackers:
            assert cache.store(request(attacker, agent=attacker, model=attacker), answer(f"from {attacker}")).stored
        for victim in victims:
            found = cache.lookup(request(victim, PARAPHRASE))
            assert found.answer is not None and found.answer["content"] == f"secret of {victim}"
        # a query on the indexed tenant / agent tags, escaped by redisvl, matches that exact name only.
        # RediSearch trims a tag's outer whitespace and ends it at a NUL, and redisvl's escaping does not
        # cover control characters: for such names the tags are approximate, which is why isolation
        # rests on the scope (a SHA-256 digest), never on them
        storage = cache.storage
        assert isinstance(storage, RedisStore)
        index = storage._index_name(embedder.dim)
        assert index is not None
        for field, names in (("tenant", victims + attackers), ("namespace", attackers)):
            for name in (n for n in names if n == n.strip() and n.isprintable()):
                query = Query(str(Tag(field) == name)).return_fields(field).paging(0, 100)
                docs = storage._client.ft(index).search(query).docs
                assert name in [doc[field] for doc in docs], (field, name)
                assert {doc[field].split("\x00")[0].strip() for doc in docs} == {name}, (field, name)
        stats = cache.stats
        assert hits == 0 and reads == len(attackers) * 8
        assert stats.miss_reasons.get("error", 0) == 0 and stats.store_skips.get("error", 0) == 0
        assert storage.skipped_entries == 0 and storage.available
        assert stats.entries == len(victims) + len(attackers)


# ------------------------------------------------------------------ no secret is ever written
SECRETS = {"api_key": "sk-SECRET-apikey-7f3a9c", "header": "sk-SECRET-header-51b2e8",
           "metadata": "sk-SECRET-metadata-0d44aa", "env_ref": "os.environ/THRIFTY_SECRET_REF_93c1",
           "user_key": "sk-SECRET-userkey-e6f021"}


def scan(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, secret) for every secret found in the blobs, as written and lower-cased."""
    needles = [s.encode() for s in SECRETS.values()] + [b"SECRET-", b"THRIFTY_SECRET_REF"]
    return [(where, n.decode()) for where, blob in blobs.items() for n in needles if n.lower() in blob.lower()]


def redis_dump(url: str, prefix: str) -> dict[str, bytes]:
    client = redis.Redis.from_url(url)
    found: dict[str, bytes] = {}
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key).decode()
            if kind == "hash":
                value = repr(client.hgetall(key)).encode()
            elif kind == "string":
                value = bytes(client.get(key) or b"")
            elif kind == "zset":
                value = repr(client.zrange(key, 0, -1, withscores=True)).encode()
            elif kind == "list":
                value = repr(client.lrange(key, 0, -1)).encode()
            elif kind == "set":
                value = repr(client.smembers(key)).encode()
            else:
                value = repr(client.dump(key)).encode()
            found[f"redis {key!r}"] = key + b" " + value
    finally:
        client.close()
    return found


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_no_key_header_or_secret_reference_is_written_anywhere(backend: str, standin: Standin,
                                                              embedder: SentenceTransformerEmbedder, tmp_path: Path,
                                                              redis_prefix: str, request: pytest.FixtureRequest,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="thrifty")
    files = tmp_path / "written"
    ledger = {"path": files / "ledger.jsonl"}
    prices = {MODEL: {"input_per_token": 1e-6, "output_per_token": 2e-6},
              "gpt-4o-mini": {"input_per_token": 1e-6, "output_per_token": 2e-6}}
    budget = {"limits": [{"scope": "tenant", "usd": 5.0}, {"scope": "global", "usd": 50.0}]}
    url = ""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        config = ThriftySettings(cache={"backend": "redis"}, redis={"url": url, "key_prefix": redis_prefix},
                                 dedup={"backend": "redis"}, budget={**budget, "backend": "redis"}, ledger=ledger,
                                 prices=prices)
    else:
        config = ThriftySettings(cache={"backend": "embedded", "path": files / "cache.sqlite3"}, ledger=ledger,
                                 budget=budget, prices=prices)
    callback = litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
    secret_kwargs = {
        "api_key": SECRETS["api_key"],
        "extra_headers": {"Authorization": f"Bearer {SECRETS['header']}", "X-Api-Key": SECRETS["header"]},
        "user": "customer-17",
    }
    metadata = {"tenant": "acme", "agent": "support", "openai_api_key": SECRETS["metadata"],
                "api_key_ref": SECRETS["env_ref"], "headers": {"Authorization": f"Bearer {SECRETS['metadata']}"},
                "user_api_key": SECRETS["user_key"], "user_api_key_hash": SECRETS["user_key"]}

    def call(text: str, **extra: Any) -> dict[str, Any]:
        return {**ask(standin, text, "acme"), **secret_kwargs, "metadata": dict(metadata), **extra}

    held = hold("iso-parcel")
    parcel = f"Where is my parcel? [hold:{held}]"

    async def scenario() -> None:
        await litellm.acompletion(**call(QUESTION))                      # a call, stored
        await litellm.acompletion(**call(QUESTION))                      # an exact hit
        await litellm.acompletion(**call(PARAPHRASE))                    # a semantic hit
        stream = await litellm.acompletion(**call("What are your opening hours?", stream=True))
        async for _ in stream:
            pass
        pair = [asyncio.create_task(litellm.acompletion(**call(parcel)))
                for _ in range(2)]                                       # a join
        await async_wait_for(lambda: standin.held(held) == 1
                             and list(callback.gate.local_flights.snapshot().values()) == [1], what="a join")
        standin.release(held)
        await asyncio.gather(*pair)
        with pytest.raises(litellm.exceptions.InternalServerError):      # a provider error
            await litellm.acompletion(**call("Translate this. [status:500]"))
        await litellm_plugins.areport_wrong(call(PARAPHRASE))            # a report

    try:
        asyncio.run(scenario())
        litellm.completion(**call("What is your phone number?"))       # the sync path
        wait_for(lambda: callback.gate.cache.stats.stores == 4, what="four answers stored")
        events = callback.gate.ledger.events()
    finally:
        litellm_plugins.uninstall()
    assert standin.calls() >= 5 and len(events) >= 8
    written = {str(path): path.read_bytes() for path in files.rglob("*") if path.is_file()}
    assert (files / "ledger.jsonl").stat().st_size > 0
    if backend == "embedded":
        assert any("cache" in name for name in written)
    else:
        redis_blobs = redis_dump(url, redis_prefix)
        assert any(b":cache:e:" in blob for blob in redis_blobs.values())
        written.update(redis_blobs)
    written["ledger events"] = repr(events).encode()
    thrifty_logs = [r for r in caplog.records if r.name.startswith("thrifty")]
    written["logs"] = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in thrifty_logs).encode()
    assert thrifty_logs, "the scenario logged nothing at DEBUG: the log scan would prove nothing"
    assert scan(written) == []


# ------------------------------------------------------------------ size limits
def test_an_oversized_answer_or_request_is_not_stored(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder, cache={"max_answer_bytes": 2_000, "max_request_chars": 500})
    settings = g.settings
    cache = g.cache
    small = canonicalize(chat(QUESTION), settings)
    assert cache.store(small, answer("x" * 1_900)).stored
    big = canonicalize(chat("What is the warranty period?"), settings)
    assert cache.store(big, answer("é" * 1_100)).reason == "answer_too_large"  # 2,200 bytes in UTF-8
    long = canonicalize(chat("Please summarise: " + "lorem ipsum " * 50), settings)
    assert cache.store(long, answer("short")).reason == "request_too_large"
    assert not cache.lookup(big).hit and not cache.lookup(long).hit and cache.lookup(small).hit
    assert cache.stats.entries == 1
    assert dict(cache.stats.store_skips) == {"answer_too_large": 1, "request_too_large": 1}


def test_size_limits_default_on_and_can_be_lifted() -> None:
    defaults = ThriftySettings().cache
    assert defaults.max_answer_bytes == 1_000_000 and defaults.max_request_chars == 100_000
    lifted = ThriftySettings(cache={"max_answer_bytes": None, "max_request_chars": None}).cache
    assert lifted.max_answer_bytes is None and lifted.max_request_chars is None
    with pytest.raises(ValueError, match="max_answer_bytes"):
        ThriftySettings(cache={"max_answer_bytes": 0})


def test_an_oversized_answer_through_the_sdk_is_served_but_not_stored(standin: Standin, embedder:
                                                                       SentenceTransformerEmbedder,
                                                                       tmp_path: Path) -> None:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3",
                                    "max_answer_bytes": 1_000}, ledger={"path": None})
    callback = litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
    long_question = "Describe the returns policy in detail: " + "which items, which days, which refunds; " * 30
    try:
        responses = []
        for settled, text in zip((1, 2, 3, 3), (long_question, long_question, QUESTION, QUESTION)):
            responses.append(litellm.completion(**ask(standin, text, "acme")))
            wait_for(lambda: sum(callback.gate.cache.stats.store_skips.values()) + callback.gate.cache.stats.stores
                     >= settled, what="the answer stored or skipped")  # noqa: B023 - waited for at once
        stats = callback.gate.cache.stats
    finally:
        litellm_plugins.uninstall()
    assert [decision(r) for r in responses] == ["call", "call", "call", "cache_hit"]
    assert all(r.choices[0].message.content for r in responses)
    assert stats.store_skips["answer_too_large"] == 2 and stats.entries == 1
