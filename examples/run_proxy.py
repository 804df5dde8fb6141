"""The LiteLLM proxy with thrifty (``examples/litellm_config.yaml``), and an OpenAI client using it.

What it shows:

1. a question through the proxy goes to the provider (``x-thrifty-decision: call``);
2. the same question in other words is a cache hit (``x-thrifty-decision: cache_hit``), read from
   the response headers the proxy adds (``client.chat.completions.with_raw_response.create``);
3. a request for model ``auto`` is routed to a tier (``x-thrifty-tier: cheap``).

Run it from the repository root::

    python examples/run_proxy.py                          # against the bundled stand-in provider
    OPENAI_API_KEY=sk-... python examples/run_proxy.py    # against OpenAI (a fraction of a cent)
    python examples/run_proxy.py --serve --port 4000      # then keep the proxy running until Ctrl-C

It starts the stand-in provider when ``OPENAI_API_KEY`` is not set (``examples/standin.py``), then
``litellm --config examples/litellm_config.yaml`` with ``LITELLM_MASTER_KEY`` (a random one when
unset: it is printed, and is the API key clients use) and thrifty's cache in a temporary directory
(``THRIFTY_CACHE__PATH``: environment variables override the ``thrifty:`` section of the YAML), so
every run starts cold. Needs ``pip install 'litellm[proxy]'``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from standin import ensure_provider, standin_stats, stop  # first: offline defaults for the proxy and the stand-in

# isort: split
import openai

CONFIG = Path(__file__).resolve().parent / "litellm_config.yaml"
BOOT_TIMEOUT = 180.0  # seconds; the proxy imports a lot before it listens


def litellm_executable() -> str:
    """The ``litellm`` CLI of this Python environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "litellm"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litellm")
    if found is None:
        sys.exit("no `litellm` command: pip install 'litellm[proxy]'")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_live(url: str, process: subprocess.Popen[Any], log: Path) -> None:
    """Wait for ``GET /health/liveliness`` to answer 200; exit with the proxy's log if it dies."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the proxy exited with code {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    sys.exit(f"the proxy did not answer on {url} within {BOOT_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")


def ask(client: openai.OpenAI, step: str, model: str, question: str) -> dict[str, str]:
    raw = client.chat.completions.with_raw_response.create(model=model,
                                                           messages=[{"role": "user", "content": question}])
    response = raw.parse()
    headers = {k: v for k, v in raw.headers.items() if k.lower().startswith("x-thrifty-")}
    print(f"\n{step}: model={model!r} {question!r}")
    print(f"  answer:                  {response.choices[0].message.content}")
    for name in ("x-thrifty-decision", "x-thrifty-tier", "x-thrifty-saved-usd"):
        if name in headers:
            print(f"  {name + ':':<24} {headers[name]}")
    # LiteLLM's own header; it sends none for a cache hit
    print(f"  x-litellm-response-cost: {raw.headers.get('x-litellm-response-cost') or '(not sent)'}")
    return headers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the LiteLLM proxy with thrifty and send it a few requests.")
    parser.add_argument("--port", type=int, default=0, help="the proxy's port (default: a free one)")
    parser.add_argument("--serve", action="store_true", help="keep the proxy running until Ctrl-C")
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) and Ctrl-C both stop the proxy and the stand-in on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    with ensure_provider() as standin_url, tempfile.TemporaryDirectory() as tmp:
        print(f"provider: {'the stand-in at ' + standin_url if standin_url else 'OpenAI (OPENAI_API_KEY)'}")
        master_key = os.environ.get("LITELLM_MASTER_KEY") or f"sk-local-{secrets.token_hex(12)}"
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "LITELLM_MASTER_KEY": master_key,
               "THRIFTY_CACHE__PATH": str(Path(tmp) / "proxy-cache.sqlite3")}
        log = Path(tmp) / "proxy.log"
        command = [litellm_executable(), "--config", str(CONFIG), "--host", "127.0.0.1", "--port", str(port)]
        print(f"starting: {' '.join(command)}")
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            wait_until_live(url, process, log)
            print(f"proxy live at {url} after {time.monotonic() - started:.1f} s (API key: {master_key})")

            client = openai.OpenAI(base_url=url, api_key=master_key, max_retries=0, timeout=60)
            ask(client, "1. a question", "gpt-4o-mini", "What's the status of order 44921?")
            ask(client, "2. the same question, reworded", "gpt-4o-mini", "Can you check the status of order 44921?")
            ask(client, "3. a routed request", "auto", "What is the capital of France?")
            if standin_url:
                print(f"\nupstream calls for 3 requests (stand-in): {standin_stats(standin_url)['calls']}")

            if args.serve:
                print(f"\nserving on {url} until Ctrl-C; try:\n"
                      f"  curl -i {url}/v1/chat/completions -H 'Authorization: Bearer {master_key}' "
                      "-H 'Content-Type: application/json' "
                      """-d '{"model": "auto", "messages": [{"role": "user", "content": "Hello"}]}'""")
                _follow(process)
        except KeyboardInterrupt:
            print("\nstopping")
        finally:
            stop(process)


def _follow(process: subprocess.Popen[Any], out: IO[str] = sys.stdout) -> None:
    """Block until the proxy exits (or Ctrl-C)."""
    while process.poll() is None:
        time.sleep(0.5)
    print(f"the proxy exited with code {process.returncode}", file=out)


if __name__ == "__main__":
    main()
