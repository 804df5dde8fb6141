#!/usr/bin/env python3
"""Set up .venv if needed, then run thrifty's main job or its test suite.

    python3 run.py demo [ARGS...]    the multi-agent demo (thrifty demo)
    python3 run.py test [ARGS...]    the whole test suite (pytest)
    python3 run.py thrifty [ARGS...] any thrifty command

Needs only Python >= 3.11 and the package registries. The virtual environment lives in .venv at
the repository root and is reused; it is (re)installed when pyproject.toml changes.

PyTorch comes first and is pinned (THRIFTY_TORCH_VERSION, default 2.13.0): from PyTorch's CPU
index when that is reachable, so that no multi-GB CUDA build is downloaded; otherwise from the
configured package index (a CPU wheel where one is provided, as on machines with the wheel
pre-downloaded). Set THRIFTY_TORCH_INDEX to use another index, or "none" to skip it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
TORCH_VERSION = os.environ.get("THRIFTY_TORCH_VERSION", "2.13.0")
TORCH_CPU_INDEX = os.environ.get("THRIFTY_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
EXTRAS = {"demo": "litellm", "thrifty": "litellm", "test": "dev"}


def say(message: str) -> None:
    print(f"[run.py] {message}", file=sys.stderr, flush=True)


def find_python() -> str:
    if sys.version_info >= (3, 11):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("run.py: thrifty needs Python >= 3.11; none found on PATH")


def venv_works() -> bool:
    return PYTHON.exists() and subprocess.run([str(PYTHON), "-c", "import sys"], capture_output=True).returncode == 0


def pip(*args: str) -> None:
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def ensure_torch() -> None:
    if subprocess.run([str(PYTHON), "-c", "import torch"], capture_output=True).returncode == 0:
        return
    spec = f"torch=={TORCH_VERSION}"
    if TORCH_CPU_INDEX != "none" and reachable(TORCH_CPU_INDEX + "/"):
        say(f"installing {spec} (CPU build, from {TORCH_CPU_INDEX})")
        pip(spec, "--extra-index-url", TORCH_CPU_INDEX)
    else:
        say(f"installing {spec} from the configured index")
        pip(spec)


def ensure_project(extra: str) -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    for have in {extra, "dev"}:  # dev includes every other extra
        done = VENV / f".thrifty-installed-{have}"
        if done.exists() and done.read_text() == digest:
            return
    stamp = VENV / f".thrifty-installed-{extra}"
    say(f"installing thrifty[{extra}] into .venv")
    pip("--upgrade", "pip")
    pip("-e", f"{ROOT}[{extra}]")
    stamp.write_text(digest)


def ensure_chromium() -> None:
    """Install Debian's ``chromium`` for the HTML report's rendering test when it is missing and
    this is root on a system with apt-get. Best effort: when it cannot, the test skips and says why."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if os.name == "nt" or not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        say("chromium is not installed (and this is not root with apt-get): the report rendering test will skip")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    say("installing chromium with apt-get, for the report rendering test")
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        say("apt-get install failed; running apt-get update and trying again")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            say("could not install chromium: the report rendering test will skip")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in EXTRAS:
        print(__doc__)
        return 2
    command, args = sys.argv[1], sys.argv[2:]
    if not venv_works():
        say("creating .venv")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([find_python(), "-m", "venv", str(VENV)], check=True)
    ensure_torch()
    ensure_project(EXTRAS[command])
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               LITELLM_LOCAL_MODEL_COST_MAP=os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "True"))
    if command == "test":
        ensure_chromium()
        argv = [str(PYTHON), "-m", "pytest", *args]
    elif command == "demo":
        argv = [str(BIN / "thrifty"), "demo", *args]
    else:
        argv = [str(BIN / "thrifty"), *args]
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
