"""Proxy throughput: a LiteLLM proxy with thrifty on, against the same proxy with thrifty off.

    thrifty bench proxy [--requests 600] [--rounds 3] [--concurrency 16] [--warmup 48] [--json FILE]
    (or: python -m benchmarks.proxy)

Starts the stand-in upstream (``thrifty.standin``, answers instantly) and two LiteLLM
proxies on loopback, one worker each, both built from ``examples/litellm_config.yaml``: "off"
without thrifty's callback and ``thrifty:`` section, "on" as the example, with its cache file in
a temporary folder. Then, in ``--rounds`` interleaved rounds (the order rotates, so noise hits all
three alike), it sends ``--requests`` non-streaming ``/v1/chat/completions`` requests from
``--concurrency`` keep-alive clients under each condition and measures requests per second:

* off: the proxy without thrifty, every prompt new;
* cold: the proxy with thrifty, every prompt new (each names another order: cache misses);
* warm: the proxy with thrifty, the cold phase's prompts again (cache hits).

Each response's ``x-thrifty-decision`` header and the stand-in's call count show what really
happened in each phase. Targets (issue 6): cold >= 80% of off, warm above off.

Also printed: the CPU time the serving proxy process spent per request (all its threads), which
is steadier than requests per second on a noisy machine. The load generator, both proxies and the
stand-in share the machine (2 cores here): the numbers are throughputs of that box, not of a proxy
alone. Any non-200 answer fails the run (exit 1). ``THRIFTY_*`` variables in the environment reach
the proxy and override the example's settings; the run prints the ones in effect. Nothing is
written outside a temporary folder, except thrifty's one-time ONNX export of the embedding model
(``embedder.onnx_dir``) if it is not there yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.summary_row import Op, SummaryRow, Target, command, failed, summary_argv

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "litellm_config.yaml"
MODEL = "gpt-4o-mini"
CONDITIONS = ("off", "cold", "warm")
ORDERS = (("off", "cold", "warm"), ("cold", "warm", "off"), ("cold", "off", "warm"))  # warm always after cold
TARGETS: dict[str, tuple[float, Op]] = {"cold": (0.80, ">="), "warm": (1.0, ">")}
EXPECTED = {"off": "(none)", "cold": "call", "warm": "cache_hit"}  # x-thrifty-decision of every answer
TUNING = ("THRIFTY_", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # changes what is measured
QUICK = ("--requests", "150", "--warmup", "16")  # the summary's run: 3 rounds of 150 requests, about 35 s


class SetupError(RuntimeError):
    """The stand-in or a proxy did not start."""


@dataclass
class Phase:
    """One measurement: a fixed number of requests under one condition."""

    condition: str
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    decisions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    upstream_calls: int = 0
    proxy_cpu: float | None = None  # CPU seconds the serving proxy process used (Linux)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"condition": self.condition, "requests": self.requests, "seconds": round(self.seconds, 3),
                "rps": round(self.rps, 1), "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None,
                "decisions": dict(self.decisions), "errors": len(self.errors),
                "upstream_calls": self.upstream_calls, "proxy_cpu_ms_per_request": self.cpu_ms}

    @property
    def cpu_ms(self) -> float | None:
        return round(1000 * self.proxy_cpu / self.requests, 2) if self.proxy_cpu is not None and self.requests else None


# ---------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """Terminate the process group the benchmark started, then kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process, all its threads (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_standin(folder: Path) -> tuple[subprocess.Popen[str], str]:
    log = folder / "standin.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "thrifty.standin", "--port", "0"], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=folder, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        stop(proc)
        raise SetupError(f"the stand-in did not start:\n{tail(log)}")
    return proc, line


def configs(folder: Path) -> tuple[Path, Path]:
    """The example's config without thrifty ("off") and as it is, files in ``folder`` ("on")."""
    example = yaml.safe_load(EXAMPLE.read_text())
    off = json.loads(json.dumps(example))
    callbacks = [c for c in off.get("litellm_settings", {}).get("callbacks", []) if "litellm_plugins" not in c]
    if callbacks:
        off["litellm_settings"]["callbacks"] = callbacks
    else:
        off.get("litellm_settings", {}).pop("callbacks", None)
    off.pop("thrifty", None)
    on = json.loads(json.dumps(example))
    section = on.setdefault("thrifty", {})
    section.setdefault("cache", {})["path"] = str(folder / "cache.sqlite3")
    if (section.get("ledger") or {}).get("path"):
        section["ledger"]["path"] = str(folder / "ledger.jsonl")
    paths = folder / "off.yaml", folder / "on.yaml"
    for path, config in zip(paths, (off, on)):
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def litellm_command() -> str:
    beside = Path(sys.executable).parent / "litellm"
    found = str(beside) if beside.exists() else shutil.which("litellm")
    if found is None:
        raise SetupError("no `litellm` command: install litellm[proxy]")
    return found


def start_proxy(name: str, config: Path, env: dict[str, str], folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = folder / f"proxy-{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([litellm_command(), "--config", str(config), "--host", "127.0.0.1", "--port",
                                 str(port), "--num_workers", "1"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=folder, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(procs: dict[str, tuple[subprocess.Popen[bytes], str]], folder: Path,
                     timeout: float = 120.0) -> dict[str, float]:
    started = time.monotonic()
    waiting = dict(procs)
    took: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while waiting:
            for name, (proc, url) in list(waiting.items()):
                if proc.poll() is not None:
                    raise SetupError(f"the {name} proxy exited with {proc.returncode}:\n"
                                     f"{tail(folder / f'proxy-{name}.log')}")
                try:
                    async with session.get(f"{url}/health/liveliness") as r:
                        if r.status == 200:
                            took[name] = time.monotonic() - started
                            del waiting[name]
                except (aiohttp.ClientError, TimeoutError):
                    pass
            if waiting and time.monotonic() - started > timeout:
                name = next(iter(waiting))
                raise SetupError(f"the {name} proxy was not ready after {timeout:.0f} s:\n"
                                 f"{tail(folder / f'proxy-{name}.log')}")
            await asyncio.sleep(0.25)
    return took


# ---------------------------------------------------------------------------------------- load
def bodies(prompts: Sequence[str]) -> list[bytes]:
    return [json.dumps({"model": MODEL, "messages": [{"role": "user", "content": p}]}).encode() for p in prompts]


def new_prompts(tag: str, count: int, start: int) -> list[str]:
    """Prompts no cache has seen: each one names another order (a verifier tells them apart)."""
    return [f"Question {tag}-{start + n}: what is the status of order {100_000 + start + n}?" for n in range(count)]


async def upstream_calls(session: aiohttp.ClientSession, standin: str) -> int:
    async with session.get(standin.removesuffix("/v1") + "/stats") as r:
        return int((await r.json())["calls"])


async def run_phase(session: aiohttp.ClientSession, url: str, key: str, payloads: list[bytes], concurrency: int,
                    phase: Phase) -> Phase:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    target = f"{url}/v1/chat/completions"
    queue = iter(payloads)

    async def client() -> None:
        for body in queue:  # one shared iterator: each request is sent once
            t0 = time.perf_counter()
            try:
                async with session.post(target, data=body, headers=headers) as r:
                    text = await r.read()
                    if r.status != 200:
                        phase.errors.append(f"HTTP {r.status}: {text[:300]!r}")
                        continue
                    phase.decisions[r.headers.get("x-thrifty-decision", "(none)")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                phase.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            phase.latencies.append(time.perf_counter() - t0)
            phase.requests += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


async def measure_rounds(args: argparse.Namespace, proxies: dict[str, str], pids: dict[str, int], key: str,
                         standin: str) -> list[list[Phase]]:
    tag = secrets.token_hex(3)
    rounds: list[list[Phase]] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency * 2, limit_per_host=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        # warm-up: connections, the proxies' first calls, thrifty's embedder, both decision paths
        warm = bodies(new_prompts(f"{tag}w", args.warmup, 0))
        for name in ("off", "on", "on"):  # the second pass through thrifty: hits
            phase = await run_phase(session, proxies[name], key, warm, args.concurrency, Phase("warm-up"))
            if phase.errors:
                raise SetupError(f"the {name} proxy failed during warm-up: {phase.errors[0]}")
        sent = args.warmup
        for index in range(args.rounds):
            cold = bodies(new_prompts(tag, args.requests, sent))
            off = bodies(new_prompts(f"{tag}off", args.requests, sent))
            sent += args.requests
            by_condition = {"off": off, "cold": cold, "warm": cold}
            phases: dict[str, Phase] = {}
            for condition in ORDERS[index % len(ORDERS)]:
                proxy = "off" if condition == "off" else "on"
                before, cpu = await upstream_calls(session, standin), cpu_seconds(pids[proxy])
                phase = await run_phase(session, proxies[proxy], key, by_condition[condition], args.concurrency,
                                        Phase(condition))
                phase.upstream_calls = await upstream_calls(session, standin) - before
                cpu_after = cpu_seconds(pids[proxy])
                phase.proxy_cpu = cpu_after - cpu if cpu is not None and cpu_after is not None else None
                phases[condition] = phase
                print(f"  round {index + 1} {condition:<5}{phase.rps:8.1f} req/s  "
                      + (f"proxy CPU {phase.cpu_ms:5.1f} ms/request  " if phase.cpu_ms is not None else "")
                      + f"{_decisions(phase.decisions)}; {phase.upstream_calls} upstream calls"
                      + (f"; {len(phase.errors)} ERRORS" if phase.errors else ""), flush=True)
            rounds.append([phases[c] for c in CONDITIONS])
    return rounds


def _decisions(counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in counts.most_common())


# ---------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace, rounds: list[list[Phase]], boot: dict[str, float]) -> dict[str, Any]:
    medians = {c: statistics.median(r[i].rps for r in rounds) for i, c in enumerate(CONDITIONS)}
    tuning = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(TUNING))
    print(f"\nproxy throughput: 1 worker per proxy, {args.concurrency} concurrent keep-alive clients, "
          f"{args.requests} non-streaming requests per measurement, zero-latency stand-in upstream "
          f"(boot: off {boot.get('off', 0):.0f} s, on {boot.get('on', 0):.0f} s; {os.cpu_count()} CPUs shared "
          f"by client, proxies and stand-in)")
    if tuning:
        print(f"  environment in effect: {' '.join(tuning)}")
    print(f"\n  {'round':<8}" + "".join(f"{c + ' req/s':>13}" for c in CONDITIONS)
          + "".join(f"{c + ' p50 ms':>13}" for c in CONDITIONS))
    for index, phases in enumerate(rounds):
        p50s = [p.summary()["p50_ms"] or 0.0 for p in phases]
        print(f"  {index + 1:<8}" + "".join(f"{p.rps:13.1f}" for p in phases) + "".join(f"{v:13.1f}" for v in p50s))
    print(f"  {'median':<8}" + "".join(f"{medians[c]:13.1f}" for c in CONDITIONS))
    cpu: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for phases in rounds:
        for condition, phase in zip(CONDITIONS, phases):
            if phase.cpu_ms is not None:
                cpu[condition].append(phase.cpu_ms)
    cpu_medians = {c: round(statistics.median(v), 2) for c, v in cpu.items() if v}
    if cpu_medians:
        print("\n  CPU of the serving proxy process per request (median over rounds, all its threads): "
              + ", ".join(f"{c} {v:.1f} ms" for c, v in cpu_medians.items()))

    print("\n  what happened (all rounds)")
    for i, condition in enumerate(CONDITIONS):
        decisions: Counter[str] = Counter()
        for phases in rounds:
            decisions.update(phases[i].decisions)
        calls = [phases[i].upstream_calls for phases in rounds]
        unexpected = sum(decisions.values()) - decisions[EXPECTED[condition]]
        print(f"  {condition:<6} x-thrifty-decision: {_decisions(decisions):<28} upstream calls per round: "
              f"{', '.join(map(str, calls))} (of {args.requests})"
              + (f"   !!! {unexpected} answers not {EXPECTED[condition]}" if unexpected else ""))

    ratios: dict[str, dict[str, Any]] = {}
    print()
    for condition, (target, op) in TARGETS.items():
        ratio = medians[condition] / medians["off"] if medians["off"] else 0.0
        met = ratio >= target if op == ">=" else ratio > target
        ratios[condition] = {"ratio": round(ratio, 3), "target": f"{op} {target:.2f}", "met": met}
        print(f"  {condition}/off = {ratio:.2f}   (target {op} {target:.2f})   {'PASS' if met else 'MISS'}")
    return {"concurrency": args.concurrency, "requests": args.requests, "cpus": os.cpu_count(),
            "boot_seconds": {k: round(v, 1) for k, v in boot.items()},
            "median_rps": {k: round(v, 1) for k, v in medians.items()}, "median_proxy_cpu_ms": cpu_medians,
            "ratios": ratios,
            "rounds": [[p.summary() for p in phases] for phases in rounds]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=48, help="warm-up requests per proxy and decision path")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    return parser


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Start the stand-in and both proxies, measure, stop them, print the report: the report's
    numbers (see :func:`report`) and every failed request. Raises :class:`SetupError`."""
    key = f"sk-thrifty-bench-{secrets.token_hex(12)}"
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    standin: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="thrifty-bench-proxy-") as tmp:
        folder = Path(tmp)
        try:
            standin, upstream = start_standin(folder)
            env = {**os.environ, "LITELLM_MASTER_KEY": key, "OPENAI_API_BASE": upstream, "OPENAI_API_KEY": "sk-standin",
                   "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
                   "NO_PROXY": "127.0.0.1,localhost"}
            off, on = configs(folder)
            for name, config in (("off", off), ("on", on)):
                procs[name] = start_proxy(name, config, env, folder)
            boot = asyncio.run(wait_ready(procs, folder))
            print(f"stand-in at {upstream}; proxies ready: off {procs['off'][1]}, on {procs['on'][1]} (thrifty)",
                  flush=True)
            rounds = asyncio.run(measure_rounds(args, {name: url for name, (_, url) in procs.items()},
                                                {name: proc.pid for name, (proc, _) in procs.items()}, key,
                                                upstream))
        finally:
            for proc, _ in procs.values():
                stop(proc)
            stop(standin)
    results = report(args, rounds, boot)
    errors = [e for phases in rounds for p in phases for e in p.errors]
    results["errors"] = len(errors)
    return results, errors


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """Throughput with thrifty, cold and warm cache, as ratios to the same proxy without thrifty.
    ``argv`` overrides the sizes (default: :data:`QUICK` if ``quick``, else the full run)."""
    argv = summary_argv(argv, quick, QUICK)
    cmd = command("proxy", argv)
    args = _parser().parse_args(argv)
    try:
        results, errors = measure(args)
    except SetupError as exc:
        return [failed("proxy", cmd, str(exc).splitlines()[0])]
    note = f"{len(errors)} requests failed: not valid" if errors else ""
    off = results["median_rps"]["off"]
    rows = []
    for condition in ("cold", "warm"):
        target, op = TARGETS[condition]
        ratio = results["ratios"][condition]["ratio"]
        rows.append(SummaryRow("proxy", f"requests/s with thrifty, {condition} cache, over thrifty off "
                               f"(median of {args.rounds} rounds)", None if errors else ratio, "x", 1.0,
                               f"LiteLLM proxy without thrifty, {off:.0f} req/s", Target(op, target, "issue 6"), cmd,
                               note or f"{results['median_rps'][condition]:.0f} req/s"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        results, errors = measure(args)
    except SetupError as exc:
        print(f"thrifty bench proxy: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if errors:
        print(f"\n  !!! {len(errors)} REQUESTS FAILED: the numbers above are not valid. The first ones:")
        for error in errors[:5]:
            print(f"      {error}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
