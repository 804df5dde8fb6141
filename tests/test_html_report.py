"""The HTML report (thrifty.html_report) and where its savings come from (thrifty.savings), on
ledger events with known numbers; and ``thrifty report --html``."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_samples import (
    CHEAP,
    HOSTILE,
    PREMIUM,
    PRICES,
    busy_events,
    configurations,
    hostile_events,
    known_events,
)
from thrifty.cli import main
from thrifty.html_report import MAX_REFUSED_ROWS, render_report, write_report
from thrifty.ledger import Ledger, LedgerEvent
from thrifty.savings import reference_model, savings_by_source
from thrifty.svg_charts import money

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr", "area", "base", "source"}


class Structure(HTMLParser):
    """Checks that every element is closed in order, and notes the ids and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.ids.update(value for name, value in attrs if name == "id" and value)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Structure:
    structure = Structure()
    structure.feed(page)
    structure.close()
    assert page.startswith("<!DOCTYPE html>") and not structure.errors and not structure.open, \
        (structure.errors, structure.open)
    return structure


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name}"
    return match.group(1)


def test_savings_by_source_from_known_events() -> None:
    savings = savings_by_source(known_events(), prices=PRICES)
    assert savings.reference_model == PREMIUM  # the most expensive model among the calls
    assert savings.exact == pytest.approx(0.01) and savings.semantic == pytest.approx(0.02)
    assert savings.joined == pytest.approx(0.06) and savings.budget == pytest.approx(0.5)
    # the cheap call's premium price less its own, less the cheap call that had to be escalated
    assert savings.routed == pytest.approx(0.0075 - 0.00045 - 0.00009)
    assert savings.total == pytest.approx(0.01 + 0.02 + 0.06 + 0.5 + 0.00696)
    assert dict(savings.counts) == {"exact": 1, "semantic": 1, "joined": 2, "routed": 2, "budget": 1,
                                    "batch": 0, "provider_cache": 0}


def test_routing_is_measured_against_the_reference_model_given() -> None:
    assert savings_by_source(known_events(), prices=PRICES, reference=CHEAP).routed == 0.0
    assert reference_model([e for e in known_events() if e.model == CHEAP], PRICES) == CHEAP
    assert reference_model([LedgerEvent("call", model="unpriced-model")], PRICES) is None


def test_the_report_shows_each_source_with_its_dollars() -> None:
    page = render_report(known_events(), prices=PRICES)
    parse(page)
    table = section(page, "savings")
    for label, events, dollars in [("exact cache hits", 1, 0.01), ("semantic cache hits", 1, 0.02),
                                   ("joined calls", 2, 0.06), ("routed cheaper", 2, 0.00696),
                                   ("refused by budget", 1, 0.5)]:
        assert f'<td class="text">{label}</td><td>{events}</td><td>{money(dollars)}</td>' in table, label
    assert f"compared with {PREMIUM}" in table
    totals = section(page, "totals")
    assert f"<b>{money(0.00129)}</b>" in totals  # spent: the three calls
    assert f"<b>{money(0.59696)}</b>" in totals  # saved: every source


def test_every_section_is_there_with_its_chart() -> None:
    page = render_report(busy_events(), configurations=configurations(), prices=PRICES)
    structure = parse(page)
    assert {"totals", "configurations", "savings", "over-time", "by-agent", "by-model", "refused"} <= structure.ids
    assert structure.tags.count("svg") == 5  # configurations, savings, over time, agents, models
    assert structure.tags.count("polyline") == 2  # spent, and what it would have cost
    by_model = section(page, "by-model")
    assert f">{PREMIUM}</text>" in by_model and f">{CHEAP}</text>" in by_model


def test_configurations_are_charted_and_tabled_with_wrong_answers_in_red() -> None:
    page = render_report([], configurations=configurations())
    parse(page)
    part = section(page, "configurations")
    assert part.count("<tr>") == 5  # a header and one row per configuration
    assert '<td class="bad">37</td>' in part and part.count('class="bad"') == 1
    assert "gpt-4o-mini\u00a070%<br>gpt-4o\u00a030%" in part and "78.6%" in part and "$0.4100" in part
    assert "Nothing is recorded" in page  # configurations, but no ledger events


def test_the_cost_over_time_ends_at_what_it_would_have_cost() -> None:
    events = known_events()
    page = render_report(events, prices=PRICES)
    chart = section(page, "over-time")
    labels = [float(v) for v in re.findall(r">\$([0-9.]+)</text>", chart)]
    assert max(labels) == pytest.approx(0.00129 + 0.59696, abs=1e-4)  # the y axis ends at the last point
    spent, would = ([tuple(map(float, p.split(","))) for p in line.split()]
                    for line in re.findall(r'points="([^"]+)"', chart))
    assert spent[-1][0] == would[-1][0] == max(x for x, _ in spent + would)  # both end at the right edge
    assert would[-1][1] == min(y for _, y in would) < spent[-1][1]  # at the top; the spend far below
    assert "over 80 s" in chart


def test_spend_by_agent_counts_calls_and_savings() -> None:
    page = render_report(known_events(), prices=PRICES)
    agents = section(page, "by-agent")
    assert f"{money(0.00045 + 0.00009)} (saved {money(0.01)})" in agents  # triage
    assert f"{money(0.00075)} (saved {money(0.08)})" in agents  # research


def test_the_near_duplicates_refused_with_their_reason() -> None:
    page = render_report(known_events(), prices=PRICES)
    refused = section(page, "refused")
    assert "number [&#x27;44922&#x27;] vs [&#x27;44921&#x27;]" in refused
    assert "What&#x27;s the status of order 44921?" in refused


def test_the_refused_table_is_capped_with_a_count_of_the_rest() -> None:
    events = [LedgerEvent("refused", agent="a", detail=f"number: order {i}") for i in range(MAX_REFUSED_ROWS + 50)]
    refused = section(render_report(events), "refused")
    assert refused.count("<tr>") == MAX_REFUSED_ROWS + 1 and "and 50 more not shown" in refused


def test_user_text_is_escaped_everywhere() -> None:
    hostile = configurations()
    hostile[0]["name"] = HOSTILE
    page = render_report(hostile_events(), configurations=hostile, title=f"report {HOSTILE}", prices=PRICES)
    structure = parse(page)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "script" not in structure.tags and "img" not in structure.tags
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in section(page, "by-agent")
    assert HOSTILE in "".join(structure.text)  # shown as text, as typed


def test_the_page_fetches_nothing() -> None:
    page = render_report(busy_events(), configurations=configurations(), prices=PRICES).lower()
    for reference in ("http:", "https:", "src=", "<link", "@import", "url(", "<script"):
        assert reference not in page, reference


def test_an_empty_ledger_is_a_page_that_says_so() -> None:
    page = render_report([])
    structure = parse(page)
    assert "nothing" in structure.ids and "Nothing is recorded in the ledger yet" in page
    assert "svg" not in structure.tags


def test_write_report_writes_the_page_and_returns_its_path(tmp_path: Path) -> None:
    path = write_report(tmp_path / "sub" / "report.html", known_events(), prices=PRICES)
    assert path == (tmp_path / "sub" / "report.html").resolve()
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_thrifty_report_html_writes_the_report_and_prints_its_path(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for event in known_events():
        ledger.record(event)
    target = tmp_path / "report.html"
    assert main(["report", str(ledger.path), "--html", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target.resolve())
    page = target.read_text(encoding="utf-8")
    parse(page)
    assert f'<td class="text">joined calls</td><td>2</td><td>{money(0.06)}</td>' in page


def test_thrifty_report_json_has_the_savings_by_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    ledger = Ledger(tmp_path / "ledger.jsonl")
    for event in known_events():
        ledger.record(event)
    assert main(["report", str(ledger.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["savings_by_source"]["exact"] == pytest.approx(0.01)
    assert report["savings_by_source"]["budget"] == pytest.approx(0.5)
    assert report["totals"]["cost"] == pytest.approx(0.00129)
