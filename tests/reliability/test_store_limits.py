"""Reliability (issue 14): what one tenant can put in the shared store, and the embedded store's
file filling up or turning read-only mid-run.

Tenants: ``cache.max_entries_per_tenant`` bounds each tenant's entries in every store (memory,
embedded file, Redis). A tenant writing five times its bound - alone, then from several threads
and event-loop tasks at once - evicts only its own least recently used entries, never another
tenant's; the bound holds at every moment; Redis's three structures (the LRU of all entries, one
per tenant, the owner hash) stay consistent through evictions past either bound, deletes and
expiry; a blocked pairing outlives its evicted entry as it does under the global LRU.

The cache file: a real SQLite ``SQLITE_FULL`` (``PRAGMA max_page_count`` on the store's own
connection) and ``SQLITE_READONLY`` (``PRAGMA query_only``) while calls run through LiteLLM's SDK
with thrifty installed, against the stand-in provider. Every call goes through, answers are served
from memory, what the file held before the fault stays, one warning is logged, and once the
condition clears persistence resumes with everything kept in memory meanwhile.

Measured numbers are printed (``-s``) for the README's table, never asserted.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis
from conftest import Standin, answer, request_for, wait_for
from faults_support import decision, install, kwargs_for, questions, report, stored
from thrifty.blocks import BLOCKED, Block
from thrifty.cache import SemanticCache
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.redis_store import RedisStore
from thrifty.request import CanonicalRequest
from thrifty.settings import ThriftySettings
from thrifty.store import CacheEntry

import litellm_plugins
from litellm_plugins import ThriftyCallback

BOUND = 20  # cache.max_entries_per_tenant in these tests
ATTACKER = "ACME*|@{acme}:t:\x00"  # the case twin of a victim, with RediSearch syntax, a key separator, NUL
VICTIMS: tuple[str | None, ...] = ("acme", None)  # None: requests naming no tenant, a tenant of their own


class Ticking:
    """A clock that moves 1 ms every time it is read: last-use order is the order of events,
    never a tie."""

    def __init__(self) -> None:
        self.now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += 0.001
            return self.now


def make_cache(kind: str, embedder: SentenceTransformerEmbedder, tmp_path: Path, request: pytest.FixtureRequest,
               **cache: Any) -> SemanticCache:
    """A cache on store ``kind`` (memory, embedded, redis) bounded at BOUND entries per tenant."""
    settings: dict[str, Any] = {"cache": {"backend": kind, "max_entries": 10_000, "max_entries_per_tenant": BOUND,
                                          **cache}, "ledger": {"path": None}}
    if kind == "embedded":
        settings["cache"]["path"] = tmp_path / "cache.sqlite3"
    if kind == "redis":
        settings["cache"]["redis_url"] = request.getfixturevalue("redis_url")
        # the bounds are under test, not Redis's speed: a slow machine must not trip the breaker
        settings["redis"] = {"key_prefix": request.getfixturevalue("redis_prefix"), "operation_timeout": 10,
                             "connect_timeout": 10, "breaker_failures": 10_000}
    return SemanticCache(ThriftySettings(**settings), embedder=embedder, clock=Ticking())


def ask(cache: SemanticCache, text: str, tenant: str | None) -> CanonicalRequest:
    return request_for(cache, text, metadata={"tenant": tenant} if tenant is not None else {})


def held(cache: SemanticCache, text: str, tenant: str | None) -> bool:
    """Whether the store holds ``text``'s own entry (read without recording a hit)."""
    canon = ask(cache, text, tenant)
    return cache.storage.get_exact(canon.scope, canon.exact_key, cache.clock()) is not None


def tenant_len(cache: SemanticCache, tenant: str | None) -> int:
    store = cache.storage
    assert isinstance(store, (EmbeddedStore, RedisStore))
    return store.tenant_len(tenant)


def victim_texts(n: int) -> dict[str | None, list[str]]:
    return {t: [f"When does order {1000 * i + j} arrive?" for j in range(n)] for i, t in enumerate(VICTIMS)}


def attacker_text(i: int) -> str:
    return f"What is the refund status of ticket {50_000 + i}?"


def redis_consistent(store: Any, *, all_live: bool = True) -> dict[str, int]:
    """Redis's bookkeeping agrees with itself: the LRU of all entries, the per-tenant LRUs and the
    owner hash rank the same keys, each in its owner's set; every entry is ranked (and, with
    ``all_live``, every ranked key is an entry). Returns their sizes."""
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(store.url)
    try:
        ranked: set[Any] = set(client.zrange(store._lru, 0, -1))
        owners: dict[Any, Any] = client.hgetall(store._owners)  # type: ignore[assignment]
        sets: dict[Any, set[Any]] = {key: set(client.zrange(key, 0, -1))
                                     for key in client.scan_iter(f"{store.prefix}:t:*")}
        entries = set(client.scan_iter(f"{store.prefix}:e:*"))
        in_sets = set().union(*sets.values()) if sets else set()
        assert set(owners) == ranked == in_sets
        assert sum(len(members) for members in sets.values()) == len(in_sets)  # no key in two tenants' sets
        assert all(owners[member] == key for key, members in sets.items() for member in members)
        assert entries <= ranked
        if all_live:
            assert ranked == entries
        return {"ranked": len(ranked), "tenants": len(sets), "entries": len(entries)}
    finally:
        client.close()


@pytest.fixture(params=["memory", "embedded", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------------------------ one tenant's share


def test_a_tenant_writing_five_times_its_bound_evicts_only_its_own_least_recently_used(
        kind: str, embedder: SentenceTransformerEmbedder, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Victims store first (so theirs are the oldest entries in the store); the attacker then
    stores 5 x BOUND, using one of its older entries on the way. Every victim entry stays; the
    attacker keeps exactly BOUND: its most recently used. A pairing blocked on one of its evicted
    entries is kept, as under the global LRU, and applies again when the entry comes back."""
    cache = make_cache(kind, embedder, tmp_path, request)
    store = cache.storage
    victims = victim_texts(10)
    for tenant, texts in victims.items():
        for text in texts:
            assert cache.store(ask(cache, text, tenant), answer(f"{tenant}: {text}")).stored

    # a pairing on the attacker's first entry is reported wrong (the paraphrase must hit first)
    first, paraphrase = attacker_text(0), "what's the refund status of ticket 50000"
    cache.store(ask(cache, first, ATTACKER), answer("Refunded."))
    control = cache.lookup(ask(cache, paraphrase, ATTACKER))
    assert control.hit and control.tier == "semantic"
    block = Block.against(ask(cache, paraphrase, ATTACKER), control.stored_key or "", first, "reported",
                          cache.clock())
    assert cache.block(block)

    flood = 5 * BOUND
    for i in range(1, flood):
        if i == 85:  # 65 is the oldest of the attacker's entries now; using it keeps it
            assert cache.lookup(ask(cache, attacker_text(65), ATTACKER)).tier == "exact"
        cache.store(ask(cache, attacker_text(i), ATTACKER), answer(f"ticket {i}"))

    kept = {i for i in range(flood) if held(cache, attacker_text(i), ATTACKER)}
    assert kept == {65, *range(81, flood)}  # its own least recently used went, and only those
    lost = [t for tenant, texts in victims.items() for t in texts if not held(cache, t, tenant)]
    assert lost == []
    found = cache.lookup(ask(cache, victims["acme"][0], "acme"))
    assert found.tier == "exact" and found.answer == {"role": "assistant", "content": f"acme: {victims['acme'][0]}"}
    assert tenant_len(cache, ATTACKER) == BOUND
    assert [tenant_len(cache, t) for t in VICTIMS] == [10, 10]
    assert len(store) == BOUND + 20
    assert store.evictions == flood - BOUND and store.tenant_evictions == flood - BOUND  # type: ignore[attr-defined]

    # the block outlived its entry, as blocks do under the global LRU; it applies when the entry is back
    assert store.blocks([block.stored_key]) == [block]
    cache.store(ask(cache, first, ATTACKER), answer("Refunded."))
    refused = cache.lookup(ask(cache, paraphrase, ATTACKER))
    assert not refused.hit and refused.refused and refused.refused[0].reason == BLOCKED
    assert tenant_len(cache, ATTACKER) == BOUND  # the entry's return evicted the attacker's next oldest
    if kind == "redis":
        redis_consistent(store)
    if kind == "embedded":  # the file holds what memory holds
        cache.close()
        reopened = EmbeddedStore(tmp_path / "cache.sqlite3", max_entries_per_tenant=BOUND)
        assert (reopened.tenant_len(ATTACKER), len(reopened)) == (BOUND, BOUND + 20)
        assert reopened.blocks([block.stored_key]) == [block]
        reopened.close()
    report(f"tenant flood ({kind} store): one tenant wrote {flood} entries ({flood // BOUND}x its bound of "
           f"{BOUND}): {flood - BOUND} of its own evicted, least recently used first; 0 of "
           f"{sum(len(t) for t in victims.values())} other tenants' entries lost")


def test_the_bound_holds_under_concurrent_writers(
        kind: str, embedder: SentenceTransformerEmbedder, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The attacker writes 5 x BOUND from 3 threads (``store``) and 3 event-loop tasks (``astore``)
    while two victims write from threads of their own. A watcher reads the attacker's count all
    along: it never passes BOUND. At the end: exactly BOUND for the attacker, every victim entry,
    exactly 5 x BOUND - BOUND evictions, and (Redis) consistent bookkeeping; (embedded) the file
    holds the same."""
    cache = make_cache(kind, embedder, tmp_path, request)
    store = cache.storage
    flood, writers = 5 * BOUND, 6
    victims = victim_texts(8)
    texts = [attacker_text(1000 + i) for i in range(flood)]
    cache.embedder.embed([*texts, *(t for ts in victims.values() for t in ts)])  # memoised: writers race on Redis
    done = threading.Event()
    start = threading.Barrier(3 + 1 + len(VICTIMS))  # every writer starts at once
    seen: list[int] = []

    def watch() -> None:
        while not done.is_set():
            seen.append(tenant_len(cache, ATTACKER))
            time.sleep(0)  # let the writers have the GIL between reads

    def attack(share: list[str]) -> None:
        start.wait(60)
        for text in share:
            assert cache.store(ask(cache, text, ATTACKER), answer(text)).stored

    async def attack_async(share: list[str]) -> None:
        for text in share:
            assert (await cache.astore(ask(cache, text, ATTACKER), answer(text))).stored

    async def tasks(shares: list[list[str]]) -> None:
        start.wait(60)
        await asyncio.gather(*(attack_async(share) for share in shares))

    def defend(tenant: str | None) -> None:
        start.wait(60)
        for text in victims[tenant]:
            assert cache.store(ask(cache, text, tenant), answer(text)).stored

    shares = [texts[i::writers] for i in range(writers)]
    threads = [threading.Thread(target=watch)]
    threads += [threading.Thread(target=attack, args=(share,)) for share in shares[:3]]
    threads += [threading.Thread(target=asyncio.run, args=(tasks(shares[3:]),))]
    threads += [threading.Thread(target=defend, args=(tenant,)) for tenant in VICTIMS]
    errors: list[BaseException] = []
    threading.excepthook = lambda args: errors.append(args.exc_value or RuntimeError("thread failed"))
    try:
        for thread in threads:
            thread.start()
        for thread in threads[1:]:
            thread.join(120)
    finally:
        done.set()
        threads[0].join(30)
        threading.excepthook = threading.__excepthook__
    assert not errors, errors
    assert seen and max(seen) <= BOUND
    assert tenant_len(cache, ATTACKER) == BOUND
    assert [tenant_len(cache, t) for t in VICTIMS] == [8, 8]
    assert all(held(cache, t, tenant) for tenant, ts in victims.items() for t in ts)
    assert sum(held(cache, t, ATTACKER) for t in texts) == BOUND
    assert len(store) == BOUND + 16
    assert store.evictions == flood - BOUND == store.tenant_evictions  # type: ignore[attr-defined]
    if kind == "redis":
        assert redis_consistent(store) == {"ranked": BOUND + 16, "tenants": 3, "entries": BOUND + 16}
    if kind == "embedded":
        cache.close()
        reopened = EmbeddedStore(tmp_path / "cache.sqlite3", max_entries_per_tenant=BOUND)
        assert [reopened.tenant_len(t) for t in (ATTACKER, *VICTIMS)] == [BOUND, 8, 8]
        reopened.close()
    report(f"tenant flood, concurrent ({kind} store): {flood} entries from 3 threads and 3 tasks beside 2 "
           f"victims' threads: the attacker's count read {len(seen)} times, at most {max(seen)} (bound {BOUND}); "
           f"{store.evictions} evicted, all its own; 0 victim entries lost")


def test_redis_bookkeeping_survives_the_global_bound_deletes_and_expiry(
        redis_url: str, redis_prefix: str) -> None:
    """Past ``max_entries`` the least recently used go whoever owns them (the per-tenant bound
    protects others only within the total): they leave their tenant's set and the owner hash too.
    A delete leaves all three. An entry Redis expired is dropped, uncounted, when it comes up as
    least recently used; until then it only makes the bounds tighter."""
    settings = ThriftySettings(redis={"key_prefix": redis_prefix, "operation_timeout": 10})
    store = RedisStore(redis_url, settings=settings.redis, max_entries=30, max_entries_per_tenant=BOUND)
    now = time.time()

    def put(tenant: str, i: int, *, expires_at: float | None = None) -> None:
        store.put(CacheEntry(id=f"{tenant}-{i}", scope=f"scope-{tenant}", exact_key=f"{tenant}-{i}", text="t",
                             answer={"i": i}, tenant=tenant, created_at=now, last_used=now + len(order) * 1e-3,
                             expires_at=expires_at))
        order.append(f"{tenant}-{i}")

    order: list[str] = []
    for i in range(15):
        for tenant in ("a", "b", "c"):
            put(tenant, i)
    # 45 written, 30 kept: the 15 least recently used of all, whoever's they were
    assert len(store) == 30 and store.evictions == 15 and store.tenant_evictions == 0
    assert [store.tenant_len(t) for t in "abc"] == [10, 10, 10]
    assert redis_consistent(store) == {"ranked": 30, "tenants": 3, "entries": 30}
    assert all(store.get_exact(f"scope-{k[0]}", k, now) is None for k in order[:15])

    store.delete("a-14")
    assert store.tenant_len("a") == 9 and len(store) == 29
    redis_consistent(store)

    # three of d's entries expire in Redis (their TTL), then d writes past everything
    for i in range(3):
        put("d", i, expires_at=time.time() + 0.2)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.exists(*(f"{store.prefix}:e:d-{i}" for i in range(3))) == 0, timeout=30,
             what="Redis to expire d's first entries")
    redis_consistent(store, all_live=False)  # expired, still ranked
    before = store.evictions
    for i in range(3, 3 + 30):
        put("d", i)
    assert store.tenant_len("d") == BOUND and len(store) == 30
    assert store.evictions - before == 30 - 3  # the 3 expired ones left uncounted
    assert redis_consistent(store) == {"ranked": 30, "tenants": 4, "entries": 30}
    client.close()
    store.close()


# ------------------------------------------------------------------------------------ the cache file mid-run


def file_column(path: Path, column: str) -> list[str]:
    """``column`` of every entry in the cache file, read by a connection of our own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [str(value) for (value,) in db.execute(f"SELECT {column} FROM entries")]
    finally:
        db.close()


def file_keys(path: Path) -> set[str]:
    """The exact keys in the cache file."""
    return set(file_column(path, "exact_key"))


def set_fault(store: EmbeddedStore, fault: str, on: bool) -> None:
    """A real SQLite condition on the store's own connection: SQLITE_FULL (no page past the ones
    the file has) or SQLITE_READONLY."""
    db = store._db
    assert db is not None
    with store._lock:
        if fault == "disk full":
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages if on else 1_073_741_823}")
        else:
            db.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


@pytest.fixture
def on_disk(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[ThriftyCallback]:
    yield install(embedder, cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"})
    litellm_plugins.uninstall()


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_the_cache_file_filling_up_or_turning_read_only_mid_run(
        fault: str, standin: Standin, on_disk: ThriftyCallback, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = on_disk.gate.cache
    store = cache.storage
    assert isinstance(store, EmbeddedStore)
    before, during = questions(15, 20_000), questions(15, 20_100)
    numbers = {q: n for q, p, n in before + during} | {p: n for q, p, n in before + during}

    async def burst(texts: list[str]) -> list[Any]:
        return list(await asyncio.gather(*(litellm.acompletion(**kwargs_for(standin.url, t)) for t in texts),
                                         return_exceptions=True))

    def run(texts: list[str]) -> list[Any]:
        results = asyncio.run(burst(texts))
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert all(numbers.get(t, t.rstrip("?")) in r.choices[0].message.content for t, r in zip(texts, results))
        return results

    run([q for q, _, _ in before] * 2)
    stored(on_disk, 15, timeout=60)
    acknowledged = file_keys(path)
    assert len(acknowledged) == 15 and store.persisting

    with caplog.at_level(logging.INFO, logger="thrifty.store"):
        set_fault(store, fault, on=True)
        run([q for q, _, _ in during] * 2 + [p for _, p, _ in before])
        stored(on_disk, 30, timeout=60)
        assert not store.persisting and store.unwritten > 0
        served = run([q for q, _, _ in during] + [q for q, _, _ in before] + [p for _, p, _ in during])
        hits = sum(decision(r) == "cache_hit" for r in served)
        assert hits == len(served)  # from memory: the 15 the file never took, the 15 it had, and paraphrases
        assert file_keys(path) >= acknowledged  # nothing acknowledged before the fault is lost
        kept = store.unwritten
        # the condition clears; persistence resumes with a later write (tries are at most 1 s apart)
        set_fault(store, fault, on=False)
        cleared, calls = time.monotonic(), iter(range(10_000))

        def resumed() -> bool:
            run([f"Question asked after the fault, number {next(calls)}?"])
            return store.persisting

        wait_for(resumed, timeout=60, what="the store to write its file again")
        resumed_after = time.monotonic() - cleared
        stored(on_disk, standin.calls(), timeout=60)  # every answer the provider gave is stored: the file is quiet

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "thrifty.store"]
    assert len(warnings) == 1 and "cannot write cache file" in warnings[0].getMessage(), warnings
    assert "takes writes again" in caplog.text
    assert store.unwritten == 0
    in_memory = {entry.exact_key for entry in store._entries.values()}
    assert file_keys(path) == in_memory  # every entry kept in memory during the fault reached the file
    texts = file_column(path, "text")
    assert all(any(n in t for t in texts) for _, _, n in before + during)  # those of the fault too
    assert cache.stats.store_skips.get("error", 0) == 0
    report(f"cache file {fault} mid-run (SDK): {45 + len(served)} calls during the fault all completed, "
           f"{hits} of {len(served)} repeats served from memory; {len(acknowledged)} of {len(acknowledged)} entries "
           f"written before the fault still in the file; 1 warning; {kept} changes kept in memory written when "
           f"the condition cleared ({resumed_after:.2f} s after, with the next write)")


def entry(i: int, *, tenant: str | None = None, padding: int = 0) -> CacheEntry:
    return CacheEntry(id=f"k{i}", scope="s", exact_key=f"k{i}", text=f"text {i}", answer={"i": i, "p": "x" * padding},
                      tenant=tenant, created_at=time.time(), last_used=time.time())


def test_what_the_file_missed_is_written_when_it_takes_writes_again(tmp_path: Path) -> None:
    """Store level: while the file is read-only, entries are written in memory, evicted, deleted on
    purpose, blocked and hit; when it takes writes again, one write brings the file to the store's
    state - a deleted entry never comes back, an evicted one neither."""
    path = tmp_path / "c.sqlite3"
    store = EmbeddedStore(path, max_entries=5, max_entries_per_tenant=4, retry_every=0)
    for i in range(5):
        store.put(entry(i, tenant="t" if i else None))
    set_fault(store, "read-only", on=True)
    store.put(entry(5, tenant="t"))  # evicts k1, t's least recently used
    store.put(entry(6))  # evicts k0 (least recently used of all)
    store.delete("k2")  # reported wrong: must never come back
    store.record_hit("k3", time.time())
    block = Block("k3", "other", "text 3", "other text", "reported", 1.0)
    store.block(block)
    assert not store.persisting and file_keys(path) == {f"k{i}" for i in range(5)}
    assert sorted(e.id for e in store._entries.values()) == ["k3", "k4", "k5", "k6"]
    set_fault(store, "read-only", on=False)
    store.put(entry(7))
    assert store.persisting and store.unwritten == 0
    store.close()
    reopened = EmbeddedStore(path)
    assert sorted(e.id for e in reopened._entries.values()) == ["k3", "k4", "k5", "k6", "k7"]
    assert reopened.get_exact("s", "k3", time.time()).hits == 1  # type: ignore[union-attr]
    assert reopened.blocks(["k3"]) == [block]


def test_a_file_that_never_recovers_keeps_memory_bounded_and_says_what_it_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A disk that stays full: the store serves from memory, remembers at most ``max_entries`` rows
    to delete besides the entries it holds, and on close says how many changes the file lost; the
    file still holds what it had before the fault."""
    path = tmp_path / "c.sqlite3"
    store = EmbeddedStore(path, max_entries=10, retry_every=0)
    for i in range(10):
        store.put(entry(i))
    set_fault(store, "disk full", on=True)
    with caplog.at_level(logging.WARNING, logger="thrifty.store"):
        for i in range(10, 200):
            store.put(entry(i, padding=5000))  # a new page each: none left
            assert store.get_exact("s", f"k{i}", time.time()) is not None
        assert len(store) == 10 and store.unwritten <= 10 + 10
        store.close()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 2 and "cannot write cache file" in messages[0] and "lost from the file" in messages[1]
    assert file_keys(path) >= {f"k{i}" for i in range(10)}
