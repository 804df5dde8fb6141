"""The Redis store: one cache shared by every process and machine, through redisvl.

Entries are Redis hashes under ``<prefix>:cache:e:<exact key>``, so the exact tier is one
``HGETALL``. A redisvl ``SearchIndex`` (RediSearch) indexes them: an HNSW cosine vector field per
embedding size (``vector_384`` for MiniLM), and tag fields for scope, tenant and namespace. A
lookup searches only its own scope (a tag filter on the KNN query). Expiry is Redis's own: each
entry key carries its TTL. Blocked pairings (:mod:`thrifty.blocks`) are hashes too, one per stored
entry: ``<prefix>:cache:b:<stored key>``, field = the blocked request's exact key, value = the
block as JSON; every process sharing the store sees them at once.

Bounds, least recently used first, each O(log n) per write:

* ``<prefix>:cache:lru``: a sorted set of every entry key by last use bounds the store at
  ``max_entries``;
* ``<prefix>:cache:t:<digest>``: the same for one tenant's entries (``digest``: the first 32 hex
  digits of SHA-256 of the tenant's name, so that a hostile name never shapes a key; no tenant and
  the empty name are one tenant) bounds a tenant at ``max_entries_per_tenant``;
* ``<prefix>:cache:owner``: a hash from entry key to its tenant's set, so that an entry leaving by
  any door (evicted past either bound, deleted, its hits recorded) is updated in both sets.

Every write of an entry is one Lua script: store the hash, rank it in both sets, evict what is past
either bound (from both sets and the owner hash), atomically - concurrent writers never leave a
tenant past its bound. An entry Redis expired stays ranked until it is the least recently used of
its sets, and is dropped then without counting as an eviction (until then it counts toward the
bounds, which can only make them tighter).

Fail open: every call has a timeout; connection failures feed a circuit breaker
(:mod:`thrifty.breaker`), and while it is open every operation returns "nothing found" / does
nothing at once, without touching the network. Service resumes by itself when a probe succeeds.
A key under the prefix that is not a well-formed entry (another program's data, a truncated
write) is skipped, never served.

Needs Redis with the query engine: Redis 8, Redis Stack, or a managed Redis with RediSearch. On a
Redis without it the exact tier still works and vector search finds nothing (logged once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
import redis
import redis.asyncio as aioredis
from redisvl.index import SearchIndex
from redisvl.query import VectorQuery
from redisvl.query.filter import Tag
from redisvl.schema import IndexSchema

from .blocks import Block
from .redis_client import TRANSIENT_ERRORS, GuardedRedis, redact
from .settings import RedisSettings
from .store import CacheEntry, Neighbour
from .vectors import Vector

log = logging.getLogger("thrifty.redis")

T = TypeVar("T")
_FIELDS = ("id", "scope", "exact_key", "text", "answer", "namespace", "tenant", "model", "created_at",
           "expires_at", "cost", "tokens", "hits", "last_used", "v")
_VERSION = "1"
_VERBATIM = {"separator": "\x1f", "case_sensitive": True}  # a tag field holding one name, kept as is

# Forgetting an entry: out of its tenant's set, the owner hash and the set of all; 1 if it was live.
_FORGET = """
local function forget(victim, lru, owners)
  local own = redis.call('HGET', owners, victim)
  if own then redis.call('ZREM', own, victim) end
  redis.call('HDEL', owners, victim)
  redis.call('ZREM', lru, victim)
  return redis.call('DEL', victim)
end
"""
# KEYS: entry, all (lru), tenant's set, owner hash. ARGV: last use, expiry in ms or '', max_entries,
# max_entries_per_tenant or 0, then the entry's field/value pairs. Returns {evicted for the tenant's
# bound, evicted for the bound in all}.
_PUT = _FORGET + """
local key, lru, own, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local before = redis.call('HGET', owners, key)
if before and before ~= own then redis.call('ZREM', before, key) end
redis.call('DEL', key)
redis.call('HSET', key, unpack(ARGV, 5))
if ARGV[2] ~= '' then redis.call('PEXPIREAT', key, ARGV[2]) end
redis.call('ZADD', lru, ARGV[1], key)
redis.call('ZADD', own, ARGV[1], key)
redis.call('HSET', owners, key, own)
local by_tenant, in_all = 0, 0
local bound = tonumber(ARGV[4])
if bound > 0 then
  local excess = redis.call('ZCARD', own) - bound
  if excess > 0 then
    for _, victim in ipairs(redis.call('ZRANGE', own, 0, excess - 1)) do
      by_tenant = by_tenant + forget(victim, lru, owners)
    end
  end
end
local excess = redis.call('ZCARD', lru) - tonumber(ARGV[3])
if excess > 0 then
  for _, victim in ipairs(redis.call('ZRANGE', lru, 0, excess - 1)) do
    in_all = in_all + forget(victim, lru, owners)
  end
end
return {by_tenant, in_all}
"""
# KEYS: all (lru), owner hash. ARGV: entry key, time of the hit, ... An entry gone meanwhile stays gone.
_HITS = """
for i = 1, #ARGV, 2 do
  local key, now = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'hits', 1)
    redis.call('HSET', key, 'last_used', now)
    redis.call('ZADD', KEYS[1], 'XX', now, key)
    local own = redis.call('HGET', KEYS[2], key)
    if own then redis.call('ZADD', own, 'XX', now, key) end
  end
end
return 1
"""
# KEYS: entry, all (lru), owner hash.
_DELETE = _FORGET + """
return forget(KEYS[1], KEYS[2], KEYS[3])
"""


class RedisStore:
    """:class:`~thrifty.store.Store` on Redis. Thread-safe; the async twins use redis.asyncio.

    Entries are identified by their exact key: storing a request again replaces its entry, and the
    ``id`` of an entry read back is its exact key. ``max_entries_per_tenant`` (None: no bound of
    its own) bounds each tenant's entries; see the module for how.
    """

    def __init__(self, url: str | None = None, *, settings: RedisSettings | None = None,
                 max_entries: int = 100_000, max_entries_per_tenant: int | None = None) -> None:
        self.settings = settings or RedisSettings()
        self.url = url or self.settings.url
        self.max_entries = max_entries
        self.max_entries_per_tenant = max_entries_per_tenant
        self.prefix = f"{self.settings.key_prefix}:cache"
        self._lru = f"{self.prefix}:lru"
        self._owners = f"{self.prefix}:owner"
        self._redis = GuardedRedis(self.url, self.settings, "cache", on_failure=self._lost_contact,
                                   on_error=self._index_missing)
        self.breaker = self._redis.breaker
        self._client = self._redis.client
        self._indexes: dict[int, str] = {}  # vector size -> index name, once created
        self._lock = threading.Lock()
        self._put_script = self._client.register_script(_PUT)
        self._hits_script = self._client.register_script(_HITS)
        self._delete_script = self._client.register_script(_DELETE)
        self._count_lock = threading.Lock()
        self._evictions = 0
        self.tenant_evictions = 0
        self._pending_hits: list[tuple[str, float]] = []
        self._hits_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # a put waits for hits being written: eviction must see them
        self._hits_ready = threading.Event()
        self._flusher: threading.Thread | None = None
        self.skipped_entries = 0
        self.search_supported = True

    # ------------------------------------------------------------------ Store interface
    @property
    def evictions(self) -> int:
        return self._evictions

    @property
    def available(self) -> bool:
        """False while the circuit breaker is open and cooling down: callers should not wait on
        Redis. True again once a probe may be sent."""
        return self._redis.available

    def __len__(self) -> int:
        return int(self._run(lambda: self._client.zcard(self._lru), 0))

    def tenant_len(self, tenant: str | None) -> int:
        """How many entries ``tenant`` has ranked (None and "" are the same tenant)."""
        return int(self._run(lambda: self._client.zcard(self._tenant_key(tenant)), 0))

    def get_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None:
        raw: Any = self._run(lambda: self._client.hgetall(self._key(exact_key)), None)
        return self._entry_or_none(raw, exact_key, scope, now)

    def search(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]:
        dim = int(vector.shape[0])

        def go() -> list[Neighbour]:
            index = self._index_name(dim)
            if index is None:
                return []
            query = self._query(scope, vector, k)
            result: Any = self._client.ft(index).search(query, query_params=query.params)
            return self._neighbours(result.docs, scope, now)

        return self._run(go, [])

    def put(self, entry: CacheEntry) -> None:
        keys, args = self._put_call(entry)
        self.flush()  # recency first, so that eviction below sees it

        def go() -> None:
            if entry.vector is not None:
                self._index_name(int(entry.vector.shape[0]))
            self._count(self._put_script(keys=keys, args=args))

        self._run(go, None)

    def record_hit(self, entry_id: str, now: float) -> None:
        """Queued, not waited for: a background thread writes hit counts and recency in batches,
        so a hit costs the caller no extra round trip."""
        with self._hits_lock:
            self._pending_hits.append((self._key(entry_id), now))
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(target=self._flush_hits_loop, name="thrifty-redis-hits",
                                                 daemon=True)
                self._flusher.start()
        self._hits_ready.set()

    def flush(self) -> None:
        """Write queued hit counts now (they are otherwise written within about 50 ms); returns
        once they are written, even when the background writer had already taken them."""
        with self._flush_lock:
            with self._hits_lock:
                pending, self._pending_hits = self._pending_hits, []
            if not pending:
                return
            args = [value for key, now in pending for value in (key, repr(now))]
            self._run(lambda: self._hits_script(keys=[self._lru, self._owners], args=args), None)

    def _flush_hits_loop(self) -> None:
        while True:
            self._hits_ready.wait()
            time.sleep(0.05)  # gather a batch
            self._hits_ready.clear()
            self.flush()

    def delete(self, entry_id: str) -> None:
        self._run(lambda: self._delete_script(keys=[self._key(entry_id), self._lru, self._owners]), None)

    def clear(self) -> None:
        def go() -> None:
            batch: list[bytes] = []
            for pattern in (f"{self.prefix}:e:*", f"{self.prefix}:b:*", f"{self.prefix}:t:*"):
                for key in self._client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        self._client.delete(*batch)
                        batch = []
            if batch:
                self._client.delete(*batch)
            self._client.delete(self._lru, self._owners)

        self._run(go, None)

    def close(self) -> None:
        self.flush()
        self._client.close()

    async def aget_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None:
        client = self._aclient()
        raw: Any = await self._arun(lambda: client.hgetall(self._key(exact_key)), None)  # type: ignore[arg-type]
        return self._entry_or_none(raw, exact_key, scope, now)

    async def asearch(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]:
        client = self._aclient()
        dim = int(vector.shape[0])

        async def go() -> list[Neighbour]:
            index = self._indexes.get(dim) or await asyncio.to_thread(self._index_name, dim)
            if index is None:
                return []
            query = self._query(scope, vector, k)
            result: Any = await client.ft(index).search(query, query_params=query.params)
            return self._neighbours(result.docs, scope, now)

        return await self._arun(go, [])

    async def aput(self, entry: CacheEntry) -> None:
        if self._pending_hits or self._flush_lock.locked():
            await asyncio.to_thread(self.flush)
        vector = entry.vector
        if vector is not None and int(vector.shape[0]) not in self._indexes and self.available:
            await asyncio.to_thread(self._run, lambda: self._index_name(int(vector.shape[0])), None)
        client = self._aclient()
        keys, args = self._put_call(entry)
        script = client.register_script(_PUT)  # bound to this loop's client; runs by its digest

        async def go() -> None:
            self._count(await script(keys=keys, args=args))

        await self._arun(go, None)

    async def arecord_hit(self, entry_id: str, now: float) -> None:
        self.record_hit(entry_id, now)  # only queues: never waits on Redis

    # ------------------------------------------------------------------ blocked pairings
    def block(self, block: Block) -> None:
        self._run(lambda: self._client.hset(self._block_key(block.stored_key), block.new_key, _block_json(block)),
                  None)

    def blocks(self, stored_keys: Sequence[str]) -> list[Block]:
        if not stored_keys:
            return []

        def go() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in stored_keys:
                pipe.hvals(self._block_key(key))
            return list(pipe.execute())

        return self._parse_blocks(self._run(go, []))

    async def ablock(self, block: Block) -> None:
        client = self._aclient()
        await self._arun(lambda: client.hset(self._block_key(block.stored_key), block.new_key,  # type: ignore[arg-type]
                                             _block_json(block)), None)

    async def ablocks(self, stored_keys: Sequence[str]) -> list[Block]:
        if not stored_keys:
            return []
        client = self._aclient()

        async def go() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in stored_keys:
                pipe.hvals(self._block_key(key))
            return list(await pipe.execute())

        return self._parse_blocks(await self._arun(go, []))

    def _block_key(self, stored_key: str) -> str:
        return f"{self.prefix}:b:{stored_key}"

    def _parse_blocks(self, replies: list[Any]) -> list[Block]:
        found: list[Block] = []
        for values in replies:
            for raw in values or ():
                try:
                    data = json.loads(_text(raw))
                    found.append(Block(str(data["stored_key"]), str(data["new_key"]), str(data["stored_text"]),
                                       str(data["new_text"]), str(data.get("source", "reported")),
                                       float(data.get("at", 0.0))))
                except (ValueError, TypeError, KeyError, AttributeError):
                    self.skipped_entries += 1
        return found

    # ------------------------------------------------------------------ Redis calls
    def _run(self, call: Callable[[], T], default: T) -> T:
        return self._redis.run(call, default)

    async def _arun(self, call: Callable[[], Awaitable[T]], default: T) -> T:
        return await self._redis.arun(call, default)

    def _aclient(self) -> aioredis.Redis:
        return self._redis.aclient()

    def _lost_contact(self, error: BaseException) -> None:
        """Redis did not answer. It may come back restarted and empty: check the index then."""
        self._indexes.clear()

    def _index_missing(self, error: redis.exceptions.RedisError) -> bool:
        text = str(error).lower()
        if "no such index" in text or "unknown index" in text:
            self._indexes.clear()  # dropped or lost: recreated on the next call
            return True
        return False

    # ------------------------------------------------------------------ the index
    def _index_name(self, dim: int) -> str | None:
        """Name of the search index for vectors of size ``dim``, creating it on first use."""
        name = self._indexes.get(dim)
        if name is not None or not self.search_supported:
            return name
        with self._lock:
            if dim in self._indexes:
                return self._indexes[dim]
            schema = IndexSchema.from_dict({
                "index": {"name": f"{self.prefix}:idx:{dim}", "prefix": f"{self.prefix}:e:",
                          "storage_type": "hash"},
                "fields": [
                    {"name": "scope", "type": "tag"},
                    # names as given: not split on "," nor folded to lower case, so that a query for
                    # tenant "acme" can never match "ACME" or "acme,globex" (lookups filter on scope)
                    {"name": "tenant", "type": "tag", "attrs": _VERBATIM},
                    {"name": "namespace", "type": "tag", "attrs": _VERBATIM},
                    {"name": f"vector_{dim}", "type": "vector",
                     "attrs": {"dims": dim, "distance_metric": "cosine", "algorithm": "hnsw",
                               "datatype": "float32", "m": 16, "ef_construction": 200}},
                ],
            })
            index = SearchIndex(schema, redis_client=self._client, owns_client=False)
            try:
                if not index.exists():
                    index.create(overwrite=False)
            except Exception as exc:
                if isinstance(exc, TRANSIENT_ERRORS) or isinstance(exc.__cause__, TRANSIENT_ERRORS):
                    raise redis.exceptions.ConnectionError(str(exc)) from exc
                text = str(exc).lower()
                if "unknown command" in text or ("ft." in text and "not" in text):
                    self.search_supported = False
                    log.error("thrifty: Redis at %s has no query engine (RediSearch): the cache matches "
                              "exact requests only. Use Redis 8, Redis Stack or a managed Redis with "
                              "search.", redact(self.url))
                    return None
                if "index already exists" not in text:
                    raise
            name = str(schema.index.name)
            self._indexes[dim] = name
            return name

    def _query(self, scope: str, vector: Vector, k: int) -> Any:
        """A redisvl KNN query restricted to ``scope`` (a redis-py Query with its params)."""
        return VectorQuery(
            vector=np.asarray(vector, dtype=np.float32).tobytes(), vector_field_name=f"vector_{vector.shape[0]}",
            return_fields=list(_FIELDS), filter_expression=Tag("scope") == scope, num_results=k,
            return_score=True, dtype="float32",
        )

    # ------------------------------------------------------------------ entries
    def _key(self, exact_key: str) -> str:
        return f"{self.prefix}:e:{exact_key}"

    def _tenant_key(self, tenant: str | None) -> str:
        """The sorted set of ``tenant``'s entries: named by a digest, never by the name itself."""
        digest = hashlib.sha256((tenant or "").encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}:t:{digest}"

    def _put_call(self, entry: CacheEntry) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the put script for ``entry``."""
        key, mapping = self._mapping(entry)
        keys = [key, self._lru, self._tenant_key(entry.tenant), self._owners]
        args: list[Any] = [repr(entry.last_used or entry.created_at),
                           "" if entry.expires_at is None else str(int(entry.expires_at * 1000)),
                           str(self.max_entries), str(self.max_entries_per_tenant or 0)]
        for name, value in mapping.items():
            args += [name, value]
        return keys, args

    def _count(self, evicted: Any) -> None:
        by_tenant, in_all = (int(n) for n in evicted)
        with self._count_lock:
            self.tenant_evictions += by_tenant
            self._evictions += by_tenant + in_all

    def _mapping(self, entry: CacheEntry) -> tuple[str, dict[str, Any]]:
        mapping: dict[str, Any] = {
            "v": _VERSION, "id": entry.exact_key, "scope": entry.scope, "exact_key": entry.exact_key,
            "text": entry.text, "answer": json.dumps(entry.answer, ensure_ascii=False, separators=(",", ":")),
            "namespace": entry.namespace or "", "tenant": entry.tenant or "", "model": entry.model or "",
            "created_at": repr(entry.created_at),
            "expires_at": "" if entry.expires_at is None else repr(entry.expires_at),
            "cost": repr(entry.cost), "tokens": str(entry.tokens), "hits": str(entry.hits),
            "last_used": repr(entry.last_used or entry.created_at),
        }
        if entry.vector is not None:
            mapping[f"vector_{entry.vector.shape[0]}"] = np.asarray(entry.vector, dtype=np.float32).tobytes()
        return self._key(entry.exact_key), mapping

    def _entry_or_none(self, raw: Any, exact_key: str, scope: str, now: float) -> CacheEntry | None:
        if not raw:
            return None
        try:
            entry = _parse(raw)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            self.skipped_entries += 1
            return None
        if entry.scope != scope or entry.exact_key != exact_key or entry.expired(now):
            return None
        return entry

    def _neighbours(self, docs: list[Any], scope: str, now: float) -> list[Neighbour]:
        found: list[Neighbour] = []
        for doc in docs:
            try:
                fields = {name: getattr(doc, name) for name in _FIELDS if hasattr(doc, name)}
                entry = _parse(fields)
                similarity = 1.0 - float(_text(doc.vector_distance))
            except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
                self.skipped_entries += 1
                continue
            if entry.scope != scope or entry.expired(now) or not -1.001 <= similarity <= 1.001:
                continue
            found.append(Neighbour(entry, similarity))
        return found


def _block_json(block: Block) -> str:
    return json.dumps(asdict(block), ensure_ascii=False, separators=(",", ":"))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse(raw: dict[Any, Any]) -> CacheEntry:
    """A :class:`CacheEntry` from a Redis hash; raises ValueError for anything malformed."""
    fields = {_text(k): _text(v) for k, v in raw.items() if not _text(k).startswith("vector_")}
    if fields.get("v") != _VERSION:
        raise ValueError("not a thrifty cache entry")
    answer = json.loads(fields["answer"])
    if not isinstance(answer, dict):
        raise ValueError("answer is not an object")
    expires = fields.get("expires_at", "")
    return CacheEntry(
        id=fields["exact_key"], scope=fields["scope"], exact_key=fields["exact_key"], text=fields["text"],
        answer=answer, vector=None, namespace=fields.get("namespace") or None,
        tenant=fields.get("tenant") or None, model=fields.get("model") or None,
        created_at=float(fields["created_at"]), expires_at=float(expires) if expires else None,
        cost=float(fields["cost"]), tokens=int(fields["tokens"]), hits=int(fields.get("hits", "0")),
        last_used=float(fields.get("last_used", fields["created_at"])),
    )

