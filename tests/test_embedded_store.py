"""The embedded store: persistence, bounds, expiry, and surviving a bad file."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import answer, make_cache, request_for
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.store import CacheEntry


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def entry(i: int, scope: str = "s", *, expires_at: float | None = None) -> CacheEntry:
    return CacheEntry(id=f"e{i}", scope=scope, exact_key=f"k{i}", text=f"text {i}", answer={"i": i},
                      vector=unit(i), created_at=time.time(), expires_at=expires_at, last_used=time.time())


def test_entries_survive_a_restart(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    path = tmp_path / "cache.sqlite3"
    with make_cache(embedder, path=path) as cache:
        cache.store(request_for(cache, "What's the status of order 44921?"), answer("Shipped."))
    with make_cache(embedder, path=path) as reopened:
        assert reopened.lookup(request_for(reopened, "what's the status of order 44921")).tier == "exact"
        found = reopened.lookup(request_for(reopened, "Can you check the status of order 44921?"))
        assert found.hit and found.tier == "semantic"
        assert found.answer == {"role": "assistant", "content": "Shipped."}


def test_size_is_bounded_by_evicting_the_least_recently_used(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "c.sqlite3", max_entries=3)
    for i in range(3):
        store.put(entry(i))
    store.record_hit("e0", time.time())  # e0 is now the most recently used
    store.put(entry(3))
    assert len(store) == 3 and store.evictions == 1
    assert store.get_exact("s", "k1", time.time()) is None
    assert store.get_exact("s", "k0", time.time()) is not None
    store.close()
    reopened = EmbeddedStore(tmp_path / "c.sqlite3", max_entries=3)
    assert len(reopened) == 3 and reopened.get_exact("s", "k1", time.time()) is None
    reopened.close()
    smaller = EmbeddedStore(tmp_path / "c.sqlite3", max_entries=2)  # a bound lowered since the file was written
    assert len(smaller) == 2 and smaller.evictions == 1
    smaller.close()


def test_expired_entries_are_never_returned_and_are_purged(tmp_path: Path) -> None:
    now = time.time()
    store = EmbeddedStore(tmp_path / "c.sqlite3")
    store.put(entry(1, expires_at=now + 10))
    assert store.get_exact("s", "k1", now) is not None
    assert store.search("s", unit(1), 3, now)[0].entry.id == "e1"
    assert store.get_exact("s", "k1", now + 11) is None
    assert store.search("s", unit(1), 3, now + 11) == []
    assert len(store) == 0


def test_search_never_crosses_scopes(tmp_path: Path) -> None:
    store = EmbeddedStore(None)
    store.put(entry(1, "tenant-a"))
    assert store.search("tenant-b", unit(1), 5, time.time()) == []
    assert store.get_exact("tenant-b", "k1", time.time()) is None


def test_a_corrupt_file_is_moved_aside_and_the_cache_starts_empty(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="thrifty.store"):
        cache = make_cache(embedder, path=path)
    assert "unreadable" in caplog.text
    assert list(tmp_path.glob("cache.sqlite3.corrupt-*"))
    assert not cache.lookup(request_for(cache, "What is the refund policy?")).hit
    assert cache.store(request_for(cache, "What is the refund policy?"), answer()).stored
    assert cache.lookup(request_for(cache, "What is the refund policy?")).hit


def test_unreadable_rows_are_dropped_not_served(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = EmbeddedStore(path)
    store.put(entry(1))
    store.put(entry(2))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE entries SET answer = '{broken' WHERE id = 'e1'")
        db.execute("UPDATE entries SET vector = x'0102' WHERE id = 'e2'")
    reopened = EmbeddedStore(path)
    assert len(reopened) == 0 and reopened.dropped_rows == 2


def test_an_unwritable_location_keeps_the_cache_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="thrifty.store"):
        store = EmbeddedStore(blocker / "sub" / "cache.sqlite3")  # parent is a file
        store.put(entry(1))
    assert store.get_exact("s", "k1", time.time()) is not None
    assert "memory" in caplog.text


def test_a_file_written_by_another_schema_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    EmbeddedStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema'")
    store = EmbeddedStore(path)
    assert len(store) == 0 and list(tmp_path.glob("c.sqlite3.corrupt-*"))


def test_replacing_an_exact_key_keeps_one_entry(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "c.sqlite3")
    store.put(entry(1))
    newer = entry(9)
    newer.exact_key = "k1"
    store.put(newer)
    assert len(store) == 1
    found = store.get_exact("s", "k1", time.time())
    assert found is not None and found.answer == {"i": 9}
    store.close()
    assert len(EmbeddedStore(tmp_path / "c.sqlite3")) == 1


def test_large_scopes_move_to_hnsw_and_stay_correct() -> None:
    store = EmbeddedStore(None, hnsw_threshold=64)
    for i in range(300):
        store.put(entry(i))
    for i in (0, 77, 299):
        assert store.search("s", unit(i), 1, time.time())[0].entry.id == f"e{i}"
    store.delete("e77")
    assert all(n.entry.id != "e77" for n in store.search("s", unit(77), 5, time.time()))
