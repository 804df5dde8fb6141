"""The HTML report: one self-contained page from a ledger's events (and, from ``thrifty demo``,
the configurations it compared).

The page needs nothing but a browser: charts are inline SVG drawn here (:mod:`thrifty.svg_charts`),
the style sheet is inline, and there is no script, font, image or link to fetch. Every string
that comes from events or configurations (agent names, request texts, ...) is escaped.

Sections: headline totals; cost by configuration (bars and a table, wrong answers in red) when
configurations are given; where the savings came from (:mod:`thrifty.savings`); cost over time
(cumulative spend, and what it would have cost without thrifty: spend plus savings); spend by
agent and by model; budgets when given; and the near duplicates thrifty refused to reuse, with
the reason.

    write_report("report.html", ledger.events(), configurations=demo["configurations"])
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from .ledger import LedgerEvent, group, summarize
from .pricing import PriceTable
from .savings import SOURCE_LABELS, SOURCES, SavingsBySource, saving_of, savings_by_source
from .svg_charts import PALETTE, Bar, Series, hbars, lines, money, thin

MAX_REFUSED_ROWS = 200
SOURCE_COLOURS = dict(zip(SOURCES, ("#4e79a7", "#76b7b2", "#59a14f", "#f28e2b", "#b07aa1",
                                          "#edc948", "#9c755f"), strict=True))

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1100px;color:#222;background:#fff;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
.muted{color:#666}.bad{background:#fde2e1;color:#a00;font-weight:bold}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.text,th.text{text-align:left}td.text{max-width:560px;overflow-wrap:anywhere}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:22px}.empty{font-size:17px;padding:24px;border:1px dashed #bbb}
"""


def render_report(events: Sequence[LedgerEvent], *, configurations: Sequence[Mapping[str, Any]] | None = None,
                  title: str = "thrifty report", prices: PriceTable | None = None,
                  reference_model: str | None = None,
                  budgets: Sequence[tuple[str, float, float]] | None = None) -> str:
    """The report as one HTML document.

    Args:
        events: the ledger's events, in any order.
        configurations: the configurations a demo compared (``name``, ``upstream_calls``,
            ``cost_usd``, ``saving_pct``, ``p50_ms``, ``p95_ms``, ``hits_exact``, ``hits_semantic``,
            ``joined``, ``tier_share``, ``escalations``, ``budget_refusals``, ``wrong_answers``,
            ``hard_on_failing_tier``); a missing key shows as a dash.
        prices: prices for "routed cheaper" (default: LiteLLM's cost map and no overrides).
        reference_model: the model routed calls are compared with (default: the most expensive
            model among the calls).
        budgets: ``(label, limit, spent)`` per budget, as :func:`thrifty.budget.spent_from_ledger`
            returns them.
    """
    events = sorted(events, key=lambda e: e.at)
    prices = prices if prices is not None else PriceTable()
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="muted">{len(events)} ledger events; written {escape(time.strftime("%Y-%m-%d %H:%M:%S"))}'
            "</p>"]
    if configurations:
        body.append(_configurations(configurations))
    if not events:
        body.append('<p class="empty" id="nothing">Nothing is recorded in the ledger yet: make a call through '
                    "thrifty (or run <code>thrifty demo</code>) and write the report again.</p>")
    else:
        savings = savings_by_source(events, prices=prices, reference=reference_model)
        body += [_headline(events, savings), _savings(savings), _over_time(events, savings, prices),
                 _spend_by(events, "agent"), _spend_by(events, "model")]
        if budgets:
            body.append(_budgets(budgets))
        body.append(_refused(events))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(path: str | Path, events: Sequence[LedgerEvent], **kw: Any) -> Path:
    """Write :func:`render_report` ``(events, **kw)`` to ``path`` (its folder made if needed) and
    return the path, resolved."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(events, **kw), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------------------- sections
def _headline(events: Sequence[LedgerEvent], savings: SavingsBySource) -> str:
    totals = summarize(events)
    would = totals.cost + savings.total
    share = f"{100 * savings.total / would:.1f}%" if would > 0 else "-"
    cards = [("spent", money(totals.cost)), ("saved", money(savings.total)), ("saving", share),
             ("upstream calls", str(totals.calls)), ("cache hits", str(totals.hits)),
             ("joined calls", str(totals.joined)), ("near duplicates refused", str(totals.refused)),
             ("refused by budget", str(totals.budget_refusals))]
    if totals.audits:
        cards.append(("audits", f"{totals.audits} calls, {money(totals.audit_cost)}, "
                      f"{totals.audit_disagreements} disagreements"))
    if totals.reported_wrong:
        cards.append(("reported wrong", str(totals.reported_wrong)))
    return ('<section id="totals"><h2>Totals from the ledger</h2><div class="cards">'
            + "".join(f'<div class="card">{escape(name)}<b>{escape(value)}</b></div>' for name, value in cards)
            + "</div></section>")


def _configurations(configurations: Sequence[Mapping[str, Any]]) -> str:
    bars = [Bar(str(c.get("name", "?")), _number(c.get("cost_usd")),
                note=f"({_number(c.get('saving_pct')):.1f}% saved)" if c.get("saving_pct") is not None else "")
            for c in configurations]
    columns = [("upstream_calls", "upstream calls"), ("cost_usd", "cost"), ("saving_pct", "saving"),
               ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("hits_exact", "exact hits"),
               ("hits_semantic", "semantic hits"), ("joined", "joined"), ("tier_share", "share per tier"),
               ("escalations", "escalations"), ("budget_refusals", "budget refusals"),
               ("wrong_answers", "wrong answers served"), ("hard_on_failing_tier", "hard tasks on a failing tier")]
    head = '<tr><th class="text">configuration</th>' + "".join(f"<th>{escape(n)}</th>" for _, n in columns) + "</tr>"
    rows = []
    for c in configurations:
        cells = [f'<td class="text">{escape(str(c.get("name", "?")))}</td>']
        for key, _ in columns:
            value = c.get(key)
            bad = key in ("wrong_answers", "hard_on_failing_tier") and _number(value) > 0
            cells.append(('<td class="bad">' if bad else "<td>") + _cell(key, value) + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<section id="configurations"><h2>Cost by configuration</h2>'
            + hbars(bars, title="cost by configuration")
            + f'<table class="configurations">{head}{"".join(rows)}</table></section>')


def _savings(savings: SavingsBySource) -> str:
    counts = dict(savings.counts)
    bars = [Bar(SOURCE_LABELS[s], getattr(savings, s), note=f"({counts.get(s, 0)} events)",
                colour=SOURCE_COLOURS[s]) for s in SOURCES]
    reference = (f"routed calls are compared with {escape(savings.reference_model)}"
                 if savings.reference_model else "no priced model among the calls: nothing routed is counted")
    rows = "".join(f'<tr><td class="text">{escape(SOURCE_LABELS[s])}</td><td>{counts.get(s, 0)}</td>'
                   f'<td>{escape(money(getattr(savings, s)))}</td></tr>' for s in SOURCES)
    return ('<section id="savings"><h2>Where the savings came from</h2>'
            + hbars(bars, title="savings by source")
            + '<table class="savings"><tr><th class="text">source</th><th>events</th><th>saved</th></tr>'
            + rows + f'<tr><th class="text">total</th><th></th><th>{escape(money(savings.total))}</th></tr></table>'
            + f'<p class="muted">{reference}; "refused by budget" is money not spent, not an answer served.</p>'
            + "</section>")


def _over_time(events: Sequence[LedgerEvent], savings: SavingsBySource, prices: PriceTable) -> str:
    start = events[0].at
    spent = would = 0.0
    spend_points: list[tuple[float, float]] = [(0.0, 0.0)]
    would_points: list[tuple[float, float]] = [(0.0, 0.0)]
    for event in events:
        spent += event.cost if event.kind == "call" else 0.0
        would += (event.cost if event.kind == "call" else 0.0) + saving_of(event, savings.reference_model, prices)
        spend_points.append((event.at - start, spent))
        would_points.append((event.at - start, would))
    chart = lines([Series("spent with thrifty", PALETTE[0], thin(spend_points)),
                   Series("what it would have cost", PALETTE[1], thin(would_points))],
                  title="cumulative cost over time", x_fmt=_duration)
    return ('<section id="over-time"><h2>Cost over time</h2>' + chart
            + f'<p class="muted">from {escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)))}, '
            f"over {escape(_duration(events[-1].at - start))}</p></section>")


def _spend_by(events: Sequence[LedgerEvent], key: str) -> str:
    totals = {n: t for n, t in group(events, key).items() if t.calls or t.hits or t.joined}
    names = sorted(totals, key=lambda n: (-totals[n].cost, n))
    bars = [Bar(n, totals[n].cost, note=f"(saved {money(totals[n].saved)})") for n in names]
    return (f'<section id="by-{key}"><h2>Spend by {key}</h2>'
            + hbars(bars, title=f"spend by {key}") + "</section>")


def _budgets(budgets: Sequence[tuple[str, float, float]]) -> str:
    rows = "".join(f'<tr><td class="text">{escape(label)}</td><td>{escape(money(limit))}</td>'
                   f"<td>{escape(money(spent))}</td><td>{escape(money(max(0.0, limit - spent)))}</td></tr>"
                   for label, limit, spent in budgets)
    return ('<section id="budgets"><h2>Budgets</h2><table><tr><th class="text">budget</th><th>limit</th>'
            f"<th>spent</th><th>left</th></tr>{rows}</table></section>")


def _refused(events: Iterable[LedgerEvent]) -> str:
    refused = [e for e in events if e.kind == "refused"]
    if not refused:
        return ('<section id="refused"><h2>Near duplicates thrifty refused</h2>'
                "<p>None: no near duplicate was refused.</p></section>")
    rows = []
    for event in refused[:MAX_REFUSED_ROWS]:
        reason, _, text = event.detail.partition(": ")
        rows.append(f'<tr><td class="text">{escape(event.agent or "-")}</td>'
                    f'<td class="text">{escape(reason)}</td><td class="text">{escape(text)}</td></tr>')
    more = len(refused) - MAX_REFUSED_ROWS
    rest = f'<p class="muted">and {more} more not shown.</p>' if more > 0 else ""
    return ('<section id="refused"><h2>Near duplicates thrifty refused</h2>'
            f"<p>{len(refused)} requests looked like a stored one but were not answered with it:</p>"
            '<table class="refused"><tr><th class="text">agent</th><th class="text">why not reused</th>'
            f'<th class="text">stored request whose answer was not reused</th></tr>{"".join(rows)}</table>'
            f"{rest}</section>")


# ---------------------------------------------------------------------------------------- formats
def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _cell(key: str, value: Any) -> str:
    """A configuration's value as escaped HTML."""
    if value is None:
        return "-"
    if key == "cost_usd":
        return escape(money(_number(value)))
    if key == "saving_pct":
        return f"{_number(value):.1f}%"
    if key in ("p50_ms", "p95_ms"):
        return f"{_number(value):.0f}"
    if key == "tier_share" and isinstance(value, Mapping):
        return "<br>".join(escape(f"{model}\u00a0{100 * _number(share):.0f}%") for model, share in value.items()) or "-"
    return escape(str(value))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 or seconds == 0 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
