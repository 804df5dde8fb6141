"""The demo's stand-in world: what each model answers to each request of the workload.

The answer names its ground-truth identity (``ref:<digest of the identity>``), so whoever receives
an answer can tell which question it truly answers: :meth:`DemoWorld.judge` compares it with the
identity of the request that received it. A model not in ``strong_models`` cannot do a hard task:
its answer is a refusal, which validation catches and an un-routed deployment would hand on.
Token counts: the prompt as sent (one token per four characters) and the answer length of the
identity; latency: time to the first token plus a time per answer token, per model, scaled.

A request whose earlier turns were replaced (a history compacted into a summary) is known by its
last three messages, when only one call of the workload ends with them; a request that asks to
summarise a conversation is answered with a summary (the conversation's customer turns, cut to
about a sixth of its length and to ``max_tokens``), as a model would.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..standin import REFUSAL, Scripted, as_json_if_asked, prompt_tokens
from ..standin import tokens as count_tokens
from .workload import DemoCall, messages_digest

Judgement = Literal["right", "wrong", "failed", "unknown"]
_REF = re.compile(r"\bref:([0-9a-f]{12})\b")
_SUMMARISE = re.compile(r"^\s*summari[sz]e\b", re.IGNORECASE)
TAIL = 3  # messages that tell a compacted request's call


@dataclass(frozen=True)
class Speed:
    """A model's latency in seconds: to the first token, and per answer token."""

    first_token: float
    per_token: float


TYPICAL_SPEED = {"gpt-4o": Speed(0.45, 0.015), "gpt-4o-mini": Speed(0.30, 0.008)}
DEFAULT_SPEED = Speed(0.40, 0.012)


def ref(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


class DemoWorld:
    """A :class:`thrifty.standin.World` that knows every request of a workload."""

    def __init__(self, calls: Iterable[DemoCall], *, strong_models: Iterable[str] = ("gpt-4o",),
                 latency_scale: float = 0.1) -> None:
        self.calls: dict[str, DemoCall] = {}
        self.identities: dict[str, str] = {}
        tails: dict[str, set[str]] = {}
        for call in calls:
            self.calls.setdefault(call.digest, call)
            self.identities[ref(call.identity)] = call.identity
            if len(call.messages) > TAIL:
                tails.setdefault(messages_digest(call.messages[-TAIL:]), set()).add(call.digest)
        # only a tail that one call ends with tells a call
        self.tails = {tail: next(iter(digests)) for tail, digests in tails.items() if len(digests) == 1}
        self.strong = {_bare(model) for model in strong_models}
        self.latency_scale = latency_scale

    def answer(self, body: Mapping[str, Any], model: str) -> Scripted | None:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        tokens_in = prompt_tokens(messages, body.get("tools"))
        speed = TYPICAL_SPEED.get(_bare(model), DEFAULT_SPEED)
        call = self.call_of(messages)
        if call is None:
            return self._summary(messages, body.get("max_tokens"), tokens_in, speed)
        if call.difficulty == "hard" and _bare(model) not in self.strong:
            text, completion_tokens = REFUSAL, 12
        else:
            text = f"[{_bare(model)}] ref:{ref(call.identity)} The answer about {call.identity.split('|')[0]}."
            completion_tokens = _spread(call.answer_tokens, call.identity)
        latency = self.latency_scale * (speed.first_token + speed.per_token * completion_tokens)
        return Scripted(as_json_if_asked(body, text), tokens_in, completion_tokens, latency)

    def call_of(self, messages: list[Any]) -> DemoCall | None:
        """The workload's call these messages are: the same messages, or (for a compacted history)
        the only call that ends with the same last messages."""
        call = self.calls.get(messages_digest(messages))
        if call is None and len(messages) >= TAIL:
            digest = self.tails.get(messages_digest(messages[-TAIL:]))
            call = self.calls.get(digest) if digest is not None else None
        return call

    def _summary(self, messages: list[Any], max_tokens: Any, tokens_in: int, speed: Speed) -> Scripted | None:
        """A summary of the conversation in the request's first message, if its last asks for one."""
        if len(messages) < 2 or not _SUMMARISE.match(str(messages[-1].get("content") or "")):
            return None
        conversation = str(messages[0].get("content") or "")
        said = [line for line in conversation.splitlines() if line.startswith("user:")]
        tokens = max(16, tokens_in // 6)
        if isinstance(max_tokens, int) and max_tokens > 0:
            tokens = min(tokens, max_tokens)
        text = " ".join(said)[:4 * tokens]
        tokens = count_tokens(text)
        latency = self.latency_scale * (speed.first_token + speed.per_token * tokens)
        return Scripted(text, tokens_in, tokens, latency)

    def judge(self, call: DemoCall, content: str | None) -> Judgement:
        """``right``: the answer is to the call's question; ``wrong``: to another question;
        ``failed``: a refusal (a model that could not do the task); ``unknown``: no answer."""
        found = _REF.search(content or "")
        if found is None:
            return "failed" if content and "I'm sorry" in content else "unknown"
        return "right" if self.identities.get(found.group(1)) == call.identity else "wrong"


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _spread(tokens_: int, identity: str) -> int:
    """The identity's answer length, varied by up to 20% (deterministically)."""
    jitter = int(hashlib.sha256(identity.encode()).hexdigest()[:4], 16) / 0xFFFF
    return max(1, round(tokens_ * (0.8 + 0.4 * jitter)))
