"""``thrifty report --prompts``: the recurring parts of prompts, by the tokens and dollars spent on
them, and what the provider's prompt cache saved on each (from the ledger's calls and their
``prompt_parts``, :mod:`thrifty.prompt_parts`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from .ledger import LedgerEvent
from .pricing import PriceTable
from .prompt_parts import shares


@dataclass
class PromptRow:
    """One recurring part: sent by ``calls`` calls, ``tokens`` input tokens in all (its share of
    each call's prompt), ``spent`` dollars at the price each call paid, ``cached_tokens`` of them
    read from the provider's prompt cache, saving ``cache_saved`` dollars."""

    kind: str
    digest: str
    label: str
    calls: int = 0
    tokens: float = 0.0
    spent: float = 0.0
    cached_tokens: float = 0.0
    cache_saved: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def prompt_rows(events: Iterable[LedgerEvent], prices: PriceTable | None = None, *,
                min_calls: int = 2) -> list[PromptRow]:
    """The parts sent by at least ``min_calls`` calls, most tokens first."""
    prices = prices if prices is not None else PriceTable()
    rows: dict[tuple[str, str], PromptRow] = {}
    for event in events:
        if event.kind != "call" or not event.prompt_parts or not event.prompt_tokens:
            continue
        price = prices.batch_price(event.model) if event.lane == "batch" else prices.price(event.model)
        for part, tokens, cached in shares(event.prompt_parts, event.prompt_chars, event.prompt_tokens,
                                           event.cached_tokens):
            key = (str(part.get("kind")), str(part.get("digest")))
            row = rows.setdefault(key, PromptRow(key[0], key[1], str(part.get("label") or "")))
            row.calls += 1
            row.tokens += tokens
            row.cached_tokens += cached
            if price is not None:
                billed = price.input_cost(round(tokens), round(cached))
                row.spent += billed
                row.cache_saved += price.input_cost(round(tokens)) - billed
    return sorted((r for r in rows.values() if r.calls >= min_calls), key=lambda r: -r.tokens)


def format_prompt_rows(rows: list[PromptRow], limit: int = 20) -> str:
    """The rows as a table for the terminal."""
    if not rows:
        return "no prompt part recurs in these calls (each system prompt, tool list and history was sent once)"
    lines = [f"{'part':<8}{'digest':<14}{'calls':>7}{'tokens':>11}{'spent $':>11}{'cached':>11}{'saved $':>10}  label"]
    for r in rows[:limit]:
        lines.append(f"{r.kind:<8}{r.digest:<14}{r.calls:>7}{r.tokens:>11.0f}{r.spent:>11.4f}{r.cached_tokens:>11.0f}"
                     f"{r.cache_saved:>10.4f}  {r.label}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more (--json lists them all)")
    lines.append("tokens: the part's share of each call's input tokens; spent: at the price each call paid; "
                 "cached / saved: read from the provider's prompt cache, and what that saved")
    return "\n".join(lines)
