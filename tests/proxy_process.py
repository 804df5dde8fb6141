"""A real LiteLLM proxy process (``litellm --config ...``) on a loopback port, for the proxy tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path


def proxy_available() -> str | None:
    """Why the proxy cannot run here (``litellm[proxy]`` missing), or None when it can."""
    probe = subprocess.run([sys.executable, "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                           text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the LiteLLM proxy cannot start: install litellm[proxy] ({last})"
    return None


def litellm_executable() -> str:
    beside = Path(sys.executable).parent / "litellm"
    return str(beside) if beside.is_file() else (shutil.which("litellm") or "litellm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """``litellm --config CONFIG`` on 127.0.0.1, with a fresh master key; ready when constructed.

    Args:
        config: the proxy's config.yaml.
        env: extra environment (the provider's base URL, thrifty's paths, ...).
        workers: ``--num_workers``.
        log: where the proxy's output goes.
    """

    def __init__(self, config: Path, *, env: Mapping[str, str], log: Path, workers: int = 1,
                 timeout: float = 180.0) -> None:
        self.master_key = f"sk-thrifty-test-{secrets.token_hex(8)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
                       "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": self.master_key, **env}
        command = [litellm_executable(), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
                   "--num_workers", str(workers)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                            cwd=config.parent, start_new_session=True)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the proxy was not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the proxy and its workers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=15)
