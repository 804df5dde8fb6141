"""Where a call's input tokens go: the parts of its prompt that recur from call to call.

A call's prompt is split into the parts agents resend with every call - its system prompt, its
tool list, and the conversation before its final turn - each named by a digest of its exact
content, so the same part sent by many calls is one row in ``thrifty report --prompts``. A part's
share of the call's prompt tokens is its share of the prompt's characters (the provider's count
is exact for the whole prompt only); the input tokens the provider read from its cache are given
to the parts in the order providers cache a prompt's prefix: tools, system prompt, history.

Only a digest, a size and a short label are kept, never the text: the label of a system prompt
is its first words, left out when they look like personal data (:mod:`thrifty.privacy`); of a
tool list, the tools' names; of a history, its number of turns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .privacy import guard_for
from .request import content_parts, digest
from .settings import PersonalDataSettings

PART_KINDS = ("tools", "system", "history")  # the order a provider's prompt cache reads a prefix
LABEL_CHARS = 60
DIGEST_CHARS = 12


@dataclass(frozen=True)
class PromptPart:
    """One recurring part of a prompt: ``kind`` (tools, system, history), the digest of its exact
    content, its size in characters, and a label a person can recognise it by."""

    kind: str
    digest: str
    chars: int
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "digest": self.digest, "chars": self.chars, "label": self.label}


def prompt_parts(request: Mapping[str, Any]) -> tuple[tuple[PromptPart, ...], int]:
    """The recurring parts of ``request``'s prompt (in :data:`PART_KINDS` order; a part it does
    not have is left out), and the characters of the whole prompt. Never raises: a request whose
    messages cannot be read has no parts."""
    try:
        return _parts(request)
    except Exception:  # noqa: BLE001 - an unreadable request has no parts to report
        return (), 0


def _parts(request: Mapping[str, Any]) -> tuple[tuple[PromptPart, ...], int]:
    messages = request.get("messages")
    listed = [m for m in messages if isinstance(m, Mapping)] if isinstance(messages, list) else []
    tools = request.get("tools") if isinstance(request.get("tools"), list) else []
    system = [m for m in listed if m.get("role") in ("system", "developer")]
    rest = [m for m in listed if m.get("role") not in ("system", "developer")]
    history = rest[:-1]
    total = _chars(tools) + sum(_chars(m.get("content")) for m in listed)
    parts = []
    if tools:
        names = [str((t.get("function") or {}).get("name") or t.get("name") or "?") for t in tools
                 if isinstance(t, Mapping)]
        parts.append(PromptPart("tools", _digest(tools), _chars(tools), _shorten(", ".join(names))))
    if system:
        text = " ".join(content_parts(m.get("content"))[0] for m in system)
        parts.append(PromptPart("system", _digest([m.get("content") for m in system]),
                                sum(_chars(m.get("content")) for m in system), _system_label(text)))
    if history:
        turns = f"{len(history)} earlier message{'s' if len(history) != 1 else ''}"
        parts.append(PromptPart("history", _digest(history), sum(_chars(m.get("content")) for m in history), turns))
    return tuple(parts), total


def shares(parts: Sequence[Mapping[str, Any]], prompt_chars: int, prompt_tokens: int,
           cached_tokens: int) -> Iterable[tuple[Mapping[str, Any], float, float]]:
    """Each ledger part with its share of ``prompt_tokens`` and of the ``cached_tokens`` the
    provider read (given to the parts in cache order, each at most its own tokens)."""
    left = float(cached_tokens)
    ordered = sorted(parts, key=lambda p: PART_KINDS.index(p["kind"]) if p.get("kind") in PART_KINDS else 99)
    for part in ordered:
        tokens = prompt_tokens * part.get("chars", 0) / prompt_chars if prompt_chars else 0.0
        cached = min(tokens, left)
        left -= cached
        yield part, tokens, cached


def _digest(value: Any) -> str:
    return digest(value)[:DIGEST_CHARS]


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if value is None:
        return 0
    return len(json.dumps(value, ensure_ascii=False, default=str))


def _system_label(text: str) -> str:
    label = _shorten(text)
    if guard_for(PersonalDataSettings()).find([label]):
        return "(begins with personal data)"
    return label


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= LABEL_CHARS else flat[:LABEL_CHARS - 1].rstrip() + "…"
