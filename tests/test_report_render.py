"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``; ``python3 run.py
test`` installs it when it can) loads the file, logs no console message or script error, draws
a screenshot that is not blank and shows the charts' colours, and has the SVG in its DOM.

Chromium prints every console message to stderr as ``INFO:CONSOLE`` whatever its level (an
error and a log look alike), so any console line counts as an error: the report has no script,
so a clean page logs nothing. The first test proves the check catches what it must."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_samples import HOSTILE, PRICES, busy_events, configurations
from thrifty.html_report import SOURCE_COLOURS, write_report
from thrifty.savings import SOURCES
from thrifty.svg_charts import PALETTE

WIDTH, HEIGHT = 1200, 2000
BROKEN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head>
<body><p>a page with a console error and a script error</p>
<script>console.error("deliberate console error"); notAFunction();</script></body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (python3 run.py test does, as root)")
    return found


def browse(chromium: str, page: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Chromium run headless on ``page`` with a profile and a home of its own under ``tmp_path``."""
    home = tmp_path / "chromium-home"
    home.mkdir(exist_ok=True)
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WIDTH},{HEIGHT}", *mode,
            page.resolve().as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "HOME": str(home)})


def console_errors(stderr: str) -> list[str]:
    """The lines of Chromium's log that are console messages or uncaught script errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def screenshot(chromium: str, page: Path, tmp_path: Path) -> tuple[Path, str]:
    png = tmp_path / f"{page.stem}.png"
    result = browse(chromium, page, tmp_path, f"--screenshot={png}")
    assert result.returncode == 0 and png.is_file(), result.stderr[-3000:]
    return png, result.stderr


def colours(png: Path) -> set[tuple[int, int, int]]:
    image = pytest.importorskip("PIL.Image", reason="Pillow is needed to look at the screenshot")
    with image.open(png) as picture:
        assert picture.size == (WIDTH, HEIGHT)
        return {colour for _, colour in picture.convert("RGB").getcolors(WIDTH * HEIGHT)}


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def test_the_check_catches_console_errors_and_script_errors(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(BROKEN_PAGE, encoding="utf-8")
    _, stderr = screenshot(chromium, page, tmp_path)
    errors = console_errors(stderr)
    assert any("deliberate console error" in line for line in errors), stderr[-3000:]
    assert any("Uncaught ReferenceError" in line and "notAFunction" in line for line in errors), stderr[-3000:]


def test_the_report_renders_without_console_errors_and_shows_its_charts(chromium: str, tmp_path: Path) -> None:
    page = write_report(tmp_path / "report.html", busy_events(), configurations=configurations(), prices=PRICES)
    png, stderr = screenshot(chromium, page, tmp_path)
    assert console_errors(stderr) == [], stderr[-3000:]
    seen = colours(png)
    assert len(seen) > 100, f"only {len(seen)} colours: a blank page?"
    # the bars' colours (configurations and agents), each source of savings, the red of wrong answers
    expected = {*PALETTE[:4], *SOURCE_COLOURS.values(), "#fde2e1"}
    missing = {c for c in expected if rgb(c) not in seen}
    assert not missing, f"colours not drawn: {missing}"


def test_the_rendered_dom_has_the_charts_and_no_script(chromium: str, tmp_path: Path) -> None:
    page = write_report(tmp_path / "report.html", busy_events(), configurations=configurations(), prices=PRICES)
    result = browse(chromium, page, tmp_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    assert len(re.findall(r"<svg\b", dom)) == 5 and len(re.findall(r"<polyline\b", dom)) == 2
    # bars: 4 configurations, 7 sources of savings, 6 agents, 2 models; and the lines' 2 legend keys
    assert len(re.findall(r"<rect\b", dom)) == 4 + len(SOURCES) + 6 + 2 + 2
    assert "<script" not in dom and "&lt;script&gt;alert('pwned')&lt;/script&gt;" in dom, HOSTILE
    assert console_errors(result.stderr) == []


def test_an_empty_report_renders_and_says_so(chromium: str, tmp_path: Path) -> None:
    page = write_report(tmp_path / "empty.html", [])
    result = browse(chromium, page, tmp_path, "--dump-dom")
    assert result.returncode == 0 and console_errors(result.stderr) == [], result.stderr[-3000:]
    assert "Nothing is recorded in the ledger yet" in result.stdout
    png, stderr = screenshot(chromium, page, tmp_path)
    assert console_errors(stderr) == [] and len(colours(png)) > 2  # text on a white page
