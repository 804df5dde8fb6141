"""Reliability, bad input (issue 14, item 3): property-based attacks with hypothesis.

Every property is the same promise seen from a different door: bad input gets a clear error
naming what is wrong (``InvalidRequest`` for a request that is not a mapping, ``ValidationError``
/ ``SettingsError`` naming the field path for settings) or goes through as a miss - never an
unexpected exception in the caller's call, and never a wrong hit. A hit is wrong when the answer it
serves was produced for a request of another scope, or (from the exact tier) for another exact key,
or was served by meaning to a request that may not be matched by meaning.

Examples are derandomized (the same examples on every run, no example database), so that the
suite is deterministic in CI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import tempfile
import types
import typing
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis
import yaml
from conftest import Standin, answer, make_cache, make_gate
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.request import CanonicalRequest, InvalidRequest, canonicalize
from thrifty.settings import SettingsError, ThriftySettings

import litellm_plugins
from litellm_plugins.translate import thrifty_request


def examples(n: int) -> settings:
    """Hypothesis settings of this file: ``n`` examples, derandomized, no deadline."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])




# ---------------------------------------------------------------------------------------------
# strategies: hostile message structures

ODD_STRINGS = [
    "", " ", "\n\t ", "\x00", "\x00\x01\x02\xff", "\ud800", "a\udfffb", "\udbff\udc00", "\ufeff", "\ufffd",
    "\U0001f600", "\U000e0001", "\U0010ffff", "\u202e", "e\u0301", "Ａ", "\u0000" * 50, "🏳️‍🌈" * 20,
    "What is the refund policy?", "what is the refund policy", "WHAT IS THE REFUND POLICY?!",
]
# every plane, lone surrogates included (JSON allows them escaped)
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
short_texts = st.one_of(
    st.text(any_char, max_size=30),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),  # binary-looking
)
# huge, bounded: up to 200,000 characters (~200 kB to 800 kB of UTF-8)
huge_texts = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001f600", "ab ", "\x00"]),
                       st.integers(50_000, 200_000))
texts = st.one_of(short_texts, huge_texts)
wrong_types = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
                        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=2),
                        st.lists(st.integers(), max_size=2), st.binary(max_size=8))
stringish = st.one_of(texts, wrong_types)

b64 = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
content_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": stringish}),
    st.fixed_dictionaries({"type": st.just("input_text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(
        st.fixed_dictionaries({"url": st.one_of(b64.map(lambda d: f"data:image/png;base64,{d}"),
                                                st.just("https://example.com/cat.png"), stringish)}),
        stringish)}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries(
        {"data": b64, "format": st.sampled_from(["wav", "mp3", "??"])})}),
    st.fixed_dictionaries({"type": st.just("file"), "file": st.fixed_dictionaries({"file_data": b64})}),
    st.fixed_dictionaries({"type": stringish}),
    st.just({}),
    stringish,
)
contents = st.one_of(texts, st.lists(content_parts, max_size=4), wrong_types)
tool_calls = st.lists(st.fixed_dictionaries({
    "id": stringish, "type": st.sampled_from(["function", "nope"]),
    "function": st.one_of(st.fixed_dictionaries({"name": stringish, "arguments": stringish}), wrong_types)}),
    max_size=2)
roles = st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "developer", "function"]), stringish)
message = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": contents},
                          optional={"tool_calls": st.one_of(tool_calls, wrong_types), "tool_call_id": stringish,
                                    "name": stringish, "function_call": wrong_types}),
    st.fixed_dictionaries({"role": st.just("user"), "content": contents}),
    stringish,  # a message that is not a mapping
)
messages = st.one_of(st.lists(message, min_size=1, max_size=4), st.just([]), wrong_types, texts)

REDISEARCH = ["*", "|", "@", "{", "}", "-", '"', "'", "\\", "(", ")", "~", "%", ":", "$", "é", "\u202e"]
hostile_names = st.one_of(texts, wrong_types,
                          st.lists(st.sampled_from(REDISEARCH), min_size=1, max_size=8).map("".join))


def nested(depth: int, width: int = 1) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {f"k{j}": value for j in range(width)} if i % 2 else [value] * width
    return value


hostile_metadata = st.one_of(
    wrong_types, texts,
    st.fixed_dictionaries({}, optional={
        "tenant": hostile_names, "tenant_id": hostile_names, "namespace": hostile_names, "agent": hostile_names,
        "user": hostile_names, "workflow_id": hostile_names,
        "thrifty": st.one_of(wrong_types, texts, st.fixed_dictionaries({}, optional={
            "no_cache": stringish, "no_store": stringish, "ttl": stringish, "namespace": hostile_names,
            "exact_only": stringish})),
        "deep": st.sampled_from([nested(50), nested(300), nested(6, 6)]),
        "huge": st.just("m" * 200_000),
    }),
)
requests = st.one_of(
    st.fixed_dictionaries({"messages": messages},
                          optional={"model": st.one_of(st.just("gpt-4o-mini"), stringish), "metadata": hostile_metadata,
                                    "temperature": wrong_types, "tools": wrong_types, "user": stringish,
                                    "cache": st.one_of(wrong_types, st.fixed_dictionaries({"ttl": stringish}))}),
    st.fixed_dictionaries({"model": st.just("gpt-4o-mini"), "messages": st.lists(message, min_size=1, max_size=3)}),
    wrong_types, texts,  # not a mapping at all
)


# ---------------------------------------------------------------------------------------------
# the core gate

class Oracle:
    """An upstream stub whose every answer is unique, remembering the canonical form of the request
    each answer was made for: a reused answer is checked against where it came from."""

    def __init__(self, gate: Thrifty) -> None:
        self.gate = gate
        self.made: dict[str, CanonicalRequest] = {}
        self.asking: CanonicalRequest | None = None
        self.calls = 0
        self.hits = 0

    def upstream(self, request: dict[str, Any]) -> Completion:
        self.calls += 1
        text = f"answer #{self.calls}"
        assert self.asking is not None
        self.made[text] = self.asking
        return answer(text)

    async def aupstream(self, request: dict[str, Any]) -> Completion:
        return self.upstream(request)

    def check(self, request: Any, outcome: Completion | Reused) -> None:
        assert self.asking is not None
        if isinstance(outcome, Completion):
            assert outcome.text in self.made
            return
        self.hits += 1
        count(f"hits: {outcome.source}")
        served = str(outcome.answer["content"])
        self.check_hit(self.asking, self.made[served], outcome.source)

    @staticmethod
    def check_hit(now: CanonicalRequest, origin: CanonicalRequest, source: str) -> None:
        assert now.invalid is None and origin.invalid is None, "an unreadable request was matched"
        assert now.scope == origin.scope, "an answer crossed scopes"
        if source == "exact":
            assert now.exact_key == origin.exact_key
        else:
            assert source == "semantic"
            assert now.semantic_text is not None and origin.semantic_text is not None

    def ask(self, request: Any) -> None:
        """One call through the gate: InvalidRequest for a request that is not a mapping, else
        an answer that is not wrong."""
        if not isinstance(request, Mapping):
            with pytest.raises(InvalidRequest, match="mapping"):
                self.gate.call(request, self.upstream)
            return
        self.asking = canonicalize(request, self.gate.settings)
        self.tally()
        self.check(request, self.gate.call(request, self.upstream))

    async def aask(self, request: Any) -> None:
        if not isinstance(request, Mapping):
            with pytest.raises(InvalidRequest, match="mapping"):
                await self.gate.acall(request, self.aupstream)
            return
        self.asking = canonicalize(request, self.gate.settings)
        self.tally()
        self.check(request, await self.gate.acall(request, self.aupstream))

    def tally(self) -> None:
        assert self.asking is not None
        count("asked: unreadable" if self.asking.invalid else "asked: by meaning" if self.asking.semantic_text
              else f"asked: exact only ({self.asking.skip_semantic})")


@pytest.fixture(scope="module")
def oracle(embedder: SentenceTransformerEmbedder) -> Iterator[Oracle]:
    """One gate for the module's core properties: what one example stores, later ones may be
    served (rightly or not: that is what is checked)."""
    yield Oracle(make_gate(embedder))


STATS: dict[str, int] = {}


def count(name: str) -> None:
    STATS[name] = STATS.get(name, 0) + 1


@examples(300)
@given(request=requests)
def test_core_gate_any_request_is_an_error_or_a_safe_answer(oracle: Oracle, request: Any) -> None:
    count("core_sync")
    oracle.ask(request)
    if isinstance(request, Mapping):
        oracle.ask(request)  # asked again: an exact hit when it can be cached, never a wrong one


@examples(100)
@given(request=requests)
def test_core_gate_async_any_request_is_an_error_or_a_safe_answer(oracle: Oracle, request: Any) -> None:
    count("core_async")

    async def twice() -> None:
        await oracle.aask(request)
        if isinstance(request, Mapping):
            await oracle.aask(request)

    asyncio.run(twice())


PARAPHRASES = [
    ("What is the refund policy?", "explain the refund policy"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("Do you ship to Norway?", "do you ship to norway"),
    ("Can I change my delivery address?", "Is it possible to change my delivery address?"),
]
SCOPE_CHANGES = {
    "image": lambda r: {**r, "messages": [*r["messages"][:-1], {"role": "user", "content": [
        {"type": "text", "text": r["messages"][-1]["content"]},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
    "audio": lambda r: {**r, "messages": [*r["messages"][:-1], {"role": "user", "content": [
        {"type": "text", "text": r["messages"][-1]["content"]},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]},
    "history": lambda r: {**r, "messages": [{"role": "user", "content": "earlier"},
                                            {"role": "assistant", "content": "ok"}, *r["messages"]]},
    "tool_result": lambda r: {**r, "messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}, *r["messages"]]},
    "tools": lambda r: {**r, "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]},
    "role": lambda r: {**r, "messages": [*r["messages"][:-1], {**r["messages"][-1], "role": "assistant"}]},
    "model": lambda r: {**r, "model": "gpt-4o"},
    "tenant": lambda r: {**r, "metadata": {"tenant": "acme*|@{}-\"\\"}},
    "system": lambda r: {**r, "messages": [{"role": "system", "content": "Be terse."}, *r["messages"]]},
    "params": lambda r: {**r, "temperature": 0.3, "response_format": {"type": "json_object"}},
}


@examples(60)
@given(texts=st.one_of(short_texts.map(lambda t: (t, t)), st.sampled_from(PARAPHRASES)),
       change=st.sampled_from(sorted(SCOPE_CHANGES)))
@example(texts=("y" * 200_000,) * 2, change="image").via("huge")
@example(texts=("\ud800" * 1000,) * 2, change="tenant").via("lone surrogates")
def test_core_gate_requests_differing_in_scope_never_share_an_answer(
    embedder: SentenceTransformerEmbedder, oracle: Oracle, texts: tuple[str, str], change: str
) -> None:
    """A and B ask the same words (or a paraphrase, which the same scope would be served by
    meaning) but differ in scope (an image, audio, history, a tool result, tools, the role, the
    model, the tenant, the system prompt, parameters): B is never served A's answer, whichever is
    asked first."""
    count("pairs")
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": texts[0]}]}
    changed = SCOPE_CHANGES[change]({**base, "messages": [{"role": "user", "content": texts[1]}]})
    if texts[0] != texts[1]:  # the control: the paraphrase in the same scope may be served by meaning
        control = Oracle(make_gate(embedder, verifier=oracle.gate.verifier))
        control.ask(base)
        control.ask({**base, "messages": [{"role": "user", "content": texts[1]}]})
        count(f"pairs: paraphrase control {'hit' if control.hits else 'miss'}")
        assert control.hits == 1  # the same scope is served by meaning: the pair below can hit
    for first, second in ((base, changed), (changed, base)):
        pair = Oracle(make_gate(embedder, verifier=oracle.gate.verifier))
        pair.ask(first)
        pair.ask(second)
        assert pair.hits == 0
        assert canonicalize(first).scope != canonicalize(second).scope


@examples(60)
@given(metadata=hostile_metadata, text=st.sampled_from(["What is the refund policy?", "\ud800", ""]))
def test_core_gate_hostile_metadata_is_safe(
    embedder: SentenceTransformerEmbedder, oracle: Oracle, metadata: Any, text: str
) -> None:
    """A hostile ``metadata`` (not a mapping, deeply nested, huge, wrong types under ``thrifty``,
    RediSearch syntax in tenant and namespace) goes through, and never gets another tenant's
    answer: the same question under a plain tenant was asked first."""
    count("metadata")
    oracle = Oracle(make_gate(embedder, verifier=oracle.gate.verifier))
    plain = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "metadata": {"tenant": "plain"}}
    oracle.ask(plain)
    oracle.ask({**plain, "metadata": metadata})
    oracle.ask({**plain, "metadata": metadata})


@examples(20)
@given(hostile=st.lists(short_texts, min_size=1, max_size=4), position=st.integers(0, 4))
def test_embedder_a_hostile_text_never_spoils_its_batch(
    embedder: SentenceTransformerEmbedder, hostile: list[str], position: int
) -> None:
    """Async callers' texts are embedded in one batch: a text the tokenizer cannot read (a lone
    surrogate) gets no vector, and every other text in the batch gets the vector it gets alone."""
    count("embedder batches")
    readable = f"Where is my parcel number {uuid.uuid4().hex[:8]}?"  # new: not memoised
    batch = [*hostile[:position], readable, *hostile[position:]]
    vectors = embedder.embed(batch)
    assert len(vectors) == len(batch)
    alone = embedder.embed([readable])[0]
    assert vectors[batch.index(readable)] is not None and alone is not None
    assert float(vectors[batch.index(readable)] @ alone) > 0.999
    for text, vector in zip(batch, vectors):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            assert vector is None


@examples(25)
@given(asked=st.lists(st.tuples(texts, hostile_metadata), min_size=1, max_size=6))
def test_embedded_store_persists_or_skips_hostile_requests_and_stays_bounded(
    embedder: SentenceTransformerEmbedder, oracle: Oracle, asked: list[tuple[str, Any]]
) -> None:
    """Hostile texts and metadata through a gate on the embedded store: no exception, the size
    bound holds, and after the file is reopened every hit is still right (an entry SQLite cannot
    hold - a lone surrogate - is kept in memory only)."""
    count("store_hostile")
    with tempfile.TemporaryDirectory() as tmp:
        made: dict[str, CanonicalRequest] = {}
        for _ in range(2):  # the second time, on the reopened file
            store = EmbeddedStore(Path(tmp) / "cache.sqlite3", max_entries=3)
            config = ThriftySettings(cache={"backend": "embedded", "path": Path(tmp) / "cache.sqlite3",
                                            "max_entries": 3}, ledger={"path": None})
            user = Oracle(Thrifty(config, embedder=embedder, store=store, ledger=Ledger(),
                                  verifier=oracle.gate.verifier, prices=PriceTable(config.prices, use_litellm=False)))
            user.made, user.calls = made, len(made)
            for text, metadata in asked:
                user.ask({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
                          "metadata": metadata})
                assert len(store) <= 3
            store.close()


# ---------------------------------------------------------------------------------------------
# the LiteLLM SDK, thrifty installed, against the stand-in provider

MODEL = "openai/gpt-4o-mini"
safe_texts = texts.map(lambda t: t.replace("[", "(") if isinstance(t, str) else t)  # no stand-in directives
json_text = st.one_of(st.text(any_char, max_size=20), st.sampled_from(ODD_STRINGS), st.just("Ω" * 200_000)).map(
    lambda t: t.replace("[", "("))
json_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": json_text}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": b64.map(lambda d: f"data:image/png;base64,{d}")})}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries(
        {"data": b64, "format": st.just("wav")})}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.none(), st.integers())}),
)
sdk_messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                           "content": st.one_of(json_text, st.lists(json_parts, min_size=1, max_size=3),
                                                st.none(), st.integers())}),
    st.just({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]}),
    st.just({"role": "tool", "tool_call_id": "c1", "content": "42"}),
), min_size=1, max_size=3).map(lambda ms: [*ms, {"role": "user", "content": ms[-1].get("content") or "hi"}]
                               if ms[-1].get("role") != "user" else ms)
sdk_metadata = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "tenant": hostile_names.filter(lambda v: isinstance(v, str)), "namespace": st.sampled_from(REDISEARCH),
    "thrifty": st.one_of(wrong_types, st.fixed_dictionaries({"ttl": stringish,
                                                             "no_cache": st.sampled_from(["no", 0])})),
    "deep": st.just(nested(40))}))


@pytest.fixture(scope="module")
def sdk_gate(embedder: SentenceTransformerEmbedder, oracle: Oracle) -> Iterator[Thrifty]:
    quiet = litellm.suppress_debug_info
    yield make_gate(embedder, verifier=oracle.gate.verifier)  # its model loaded once for the module
    litellm_plugins.uninstall()
    litellm.suppress_debug_info = quiet


class SdkOracle:
    def __init__(self, gate: Thrifty) -> None:
        self.gate = gate
        self.made: dict[str, list[CanonicalRequest]] = {}


@pytest.fixture(scope="module")
def sdk_oracle(sdk_gate: Thrifty) -> SdkOracle:
    return SdkOracle(sdk_gate)


@examples(25)
@given(msgs=sdk_messages, metadata=sdk_metadata, use_async=st.booleans())
@example(msgs=[{"role": "user", "content": [
    {"type": "text", "text": "a\ud800b \udfff \U0010ffff \x00"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}],
    metadata={"tenant": "acme*|@{}-\"\\", "namespace": "(a|b)"}, use_async=False).via("surrogates, image, audio")
@example(msgs=[{"role": "user", "content": "\ud83d lone high surrogate, then " + "z" * 200_000}],
         metadata={"thrifty": {"ttl": "never", "no_cache": "no"}}, use_async=True).via("huge, lone surrogate")
@example(msgs=[{"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "\ufeff\u202e42"}, {"role": "user", "content": ""}],
    metadata={"thrifty": 7, "deep": nested(40)}, use_async=True).via("tool call and result, empty text")
def test_litellm_sdk_any_messages_fail_as_without_thrifty_or_answer_rightly(
    standin: Standin, sdk_oracle: SdkOracle, msgs: list[dict[str, Any]], metadata: Any, use_async: bool
) -> None:
    """Through ``litellm.completion`` with thrifty installed: a call LiteLLM or the provider
    refuses fails exactly as it does without thrifty (the same exception type); a call that
    succeeds is answered by the stand-in, or by a hit whose answer was made for the same scope."""
    count("sdk async" if use_async else "sdk sync")
    shape = json.dumps(msgs, default=repr, ensure_ascii=False)
    for kind, mark in (("content list", '"type"'), ("image", "image_url"), ("audio", "input_audio"),
                       ("tool call", "tool_calls"), ("tool result", '"tool"'), ("huge", "Ω" * 1000),
                       ("lone surrogate", "")):
        if mark in shape if mark else any(0xD800 <= ord(c) <= 0xDFFF for c in shape):
            count(f"sdk shapes: {kind}")

    def completion(**kwargs: Any) -> Any:
        return asyncio.run(litellm.acompletion(**kwargs)) if use_async else litellm.completion(**kwargs)

    litellm.suppress_debug_info = True  # a refused call's banner, once per refusal
    litellm_plugins.install(gate=sdk_oracle.gate)
    kwargs: dict[str, Any] = {"model": MODEL, "messages": msgs, "api_base": standin.url, "api_key": "sk-standin",
                              "timeout": 30, "max_retries": 0}
    if metadata is not None:
        kwargs["metadata"] = metadata
    canon = canonicalize(thrifty_request(kwargs), sdk_oracle.gate.settings)
    for _ in range(2):  # the second is a hit when the first could be stored
        try:
            response = completion(**kwargs)
        except Exception as with_thrifty:  # noqa: BLE001 - compared with the same call without thrifty
            count(f"sdk refused: {type(with_thrifty).__name__}")
            litellm_plugins.uninstall()
            try:
                with pytest.raises(type(with_thrifty)):
                    completion(**kwargs)
            finally:
                litellm_plugins.install(gate=sdk_oracle.gate)
            return
        text = response.choices[0].message.content
        decision = (getattr(response, "_hidden_params", None) or {}).get("thrifty", {})
        if decision.get("decision") == "cache_hit":
            count("sdk hits")
            assert text in sdk_oracle.made, "a hit served an answer the provider never gave"
            origins = sdk_oracle.made[text]
            assert any(o.scope == canon.scope for o in origins), "an answer crossed scopes"
            Oracle.check_hit(canon, next(o for o in origins if o.scope == canon.scope), decision["source"])
        else:
            assert text.startswith("[gpt-4o-mini] Answer to:")
            sdk_oracle.made.setdefault(text, []).append(canon)


# ---------------------------------------------------------------------------------------------
# settings: every field, generated from the model

def leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(field path, field info) of every leaf setting, sections walked recursively."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaves(annotation, (*path, name))
        else:
            yield (*path, name), info


LEAVES = sorted(leaves(ThriftySettings), key=lambda leaf: leaf[0])
SECTIONS = sorted({path[0] for path, _ in LEAVES if len(path) > 1})


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for name in reversed(path):
        out = {name: out}
    return out  # type: ignore[no-any-return]


def _types(annotation: Any) -> set[Any]:
    """The outer types an annotation accepts (``Literal`` values as themselves)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {("literal", v) for v in typing.get_args(annotation)}
    return {origin or annotation}


def wrong_type_for(info: Any) -> Any:
    """A value of a type the field cannot take (no lax coercion reaches it either)."""
    return 12345 if _types(info.annotation) & {list, dict} else {"not": ["a", "scalar"]}


def out_of_range_for(info: Any) -> list[Any]:
    """Values past each bound the field declares (ge, gt, le, lt, min_length, pattern), and
    outside a Literal's choices."""
    bad: list[Any] = []
    for bound in info.metadata:
        for attr, delta in (("ge", -1e-6), ("gt", 0.0), ("le", 1e-6), ("lt", 0.0)):
            limit = getattr(bound, attr, None)
            if limit is not None:
                value = limit + delta if delta else limit
                bad.append(int(limit) - 1 if attr == "ge" and isinstance(limit, int) and int in _types(info.annotation)
                           else int(limit) + 1 if attr == "le" and isinstance(limit, int)
                           and int in _types(info.annotation) else value)
        if getattr(bound, "min_length", None):
            bad.append("")
        if getattr(bound, "pattern", None):
            bad.append("has spaces and *|@")
    literals = [v for t in _types(info.annotation) if isinstance(t, tuple) for v in t[1:]]
    if literals:
        bad.append("".join(str(v) for v in literals) + "-not-a-choice")
    return bad


def assert_names(error: Exception, path: tuple[str, ...]) -> None:
    dotted = ".".join(path)
    if isinstance(error, ValidationError):
        locs = [tuple(str(p) for p in e["loc"]) for e in error.errors()]
        assert any(loc[:len(path)] == path for loc in locs), (dotted, locs)
    else:
        assert isinstance(error, SettingsError)
        assert dotted in str(error), (dotted, str(error))


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=".".join)
def test_settings_every_field_rejects_wrong_types_and_out_of_range_naming_the_field(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count("settings_fields")
    # the environment outranks a file or mapping (conftest sets the ledger's path there)
    monkeypatch.delenv("THRIFTY_" + "__".join(path).upper(), raising=False)
    info = dict(LEAVES)[path]
    bad = [wrong_type_for(info), *out_of_range_for(info)]
    for value in bad:
        count("settings_values")
        with pytest.raises(ValidationError) as direct:
            ThriftySettings(**nest(path, value))
        assert_names(direct.value, path)
        with pytest.raises(SettingsError) as mapped:
            ThriftySettings.from_mapping(nest(path, value))
        assert_names(mapped.value, path)
        file = tmp_path / "config.yaml"
        try:
            file.write_text(yaml.safe_dump({"thrifty": nest(path, value)}, allow_unicode=True))
        except yaml.YAMLError:
            continue
        with pytest.raises(SettingsError) as loaded:
            ThriftySettings.load(file)
        assert_names(loaded.value, path)


any_value = st.one_of(wrong_types, texts.filter(lambda t: len(t) < 1000), st.floats(), st.integers(-10**20, 10**20),
                      st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
                      st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.floats()), max_size=3))


@examples(300)
@given(leaf=st.sampled_from(LEAVES), value=any_value)
def test_settings_any_value_for_any_field_is_accepted_or_rejected_naming_it(leaf: Any, value: Any) -> None:
    """Whatever value a field is given: accepted (and then it reads back as a valid settings
    object), or a ValidationError / SettingsError naming the field path - nothing else."""
    count("settings_any")
    path, _ = leaf
    with pytest.MonkeyPatch.context() as env:
        # the environment outranks a mapping (conftest sets the ledger's path there)
        env.delenv("THRIFTY_" + "__".join(path).upper(), raising=False)
        try:
            accepted = ThriftySettings(**nest(path, value))
        except ValidationError as exc:
            assert_names(exc, path)
            with pytest.raises(SettingsError) as mapped:
                ThriftySettings.from_mapping(nest(path, value))
            assert_names(mapped.value, path)
            return
    ThriftySettings.model_validate(accepted.model_dump())


@examples(60)
@given(where=st.sampled_from([(), *[(s,) for s in SECTIONS]]), key=st.text(min_size=1, max_size=12))
def test_settings_unknown_keys_are_rejected_naming_them(where: tuple[str, ...], key: str) -> None:
    count("settings_unknown")
    known = set(ThriftySettings.model_fields) if not where else set(
        ThriftySettings.model_fields[where[0]].annotation.model_fields)  # type: ignore[union-attr]
    if key in known:
        return
    with pytest.raises(SettingsError) as mapped:
        ThriftySettings.from_mapping(nest((*where, key), 1))
    assert_names(mapped.value, (*where, key))


NOT_MAPPINGS = ["- 1\n- 2\n", "42\n", "just a string\n", "thrifty: [1, 2]\n", "thrifty: 7\n", "thrifty: hello\n",
                "thrifty:\n  cache: [1]\n", "thrifty:\n  cache: 5\n", "thrifty: {cache: {ttl_seconds: [}\n",
                "\x00\x01\x02", ":\n:", "thrifty: !!python/object:os.system ls\n", "*alias\n", "thrifty: &a [*a]\n"]


@pytest.mark.parametrize("text", NOT_MAPPINGS)
def test_settings_yaml_that_is_not_a_mapping_is_a_settings_error(text: str, tmp_path: Path) -> None:
    count("settings_yaml")
    file = tmp_path / "config.yaml"
    file.write_text(text)
    with pytest.raises(SettingsError):
        ThriftySettings.load(file)


@examples(40)
@given(blob=st.binary(max_size=300))
def test_settings_yaml_of_random_bytes_is_defaults_or_a_settings_error(blob: bytes) -> None:
    count("settings_yaml")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.yaml"
        file.write_bytes(blob)
        with contextlib.suppress(SettingsError):
            ThriftySettings.load(file)


# ---------------------------------------------------------------------------------------------
# a corrupt, truncated or foreign embedded store file

QUESTION = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the refund policy?"}]}


@pytest.fixture(scope="module")
def valid_store_file(embedder: SentenceTransformerEmbedder, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("store") / "cache.sqlite3"
    cache = make_cache(embedder, path=path)
    for i in range(20):
        asked = {**QUESTION, "messages": [{"role": "user", "content": f"question {i} about refunds"}]}
        cache.store(canonicalize(asked), answer(f"stored answer {i}"))
    cache.close()
    return path.read_bytes()


def foreign_schema(path: Path, variant: int) -> None:
    db = sqlite3.connect(path)
    statements = [
        ["CREATE TABLE entries (x)", "INSERT INTO entries VALUES (1)"],
        ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", "INSERT INTO meta VALUES ('schema', '99')"],
        ["CREATE TABLE entries (id TEXT PRIMARY KEY, scope TEXT NOT NULL, exact_key TEXT NOT NULL, text TEXT NOT NULL,"
         " answer TEXT NOT NULL, vector BLOB, namespace TEXT, tenant TEXT, model TEXT, created_at REAL NOT NULL,"
         " expires_at REAL, last_used REAL NOT NULL, cost REAL NOT NULL, tokens INTEGER NOT NULL,"
         " hits INTEGER NOT NULL)",
         f"INSERT INTO entries VALUES ('a', '{canonicalize(QUESTION).scope}',"
         f" '{canonicalize(QUESTION).exact_key}', 'q',"
         " 'not json', X'00ff', NULL, NULL, NULL, 'yesterday', NULL, 0, 'free', 'many', 0)",
         f"INSERT INTO entries VALUES ('b', '{canonicalize(QUESTION).scope}', 'k', 'q', '[1,2]', X'0102', NULL, NULL,"
         " NULL, 0, NULL, 0, 0, 0, 0)"],
        ["CREATE TABLE blocks (x, y)", "CREATE VIEW entries AS SELECT 1"],
        ["CREATE TABLE entries (id INTEGER)", "CREATE TABLE meta (key, value)",
         "INSERT INTO meta VALUES ('schema', NULL)"],
    ][variant]
    for sql in statements:
        db.execute(sql)
    db.commit()
    db.close()


def assert_working_cache(embedder: SentenceTransformerEmbedder, path: Path) -> None:
    """Opening ``path`` raises nothing; a gate on it answers, stores, then serves its own answer -
    never one of the file's garbage rows."""
    store = EmbeddedStore(path)
    config = ThriftySettings(cache={"backend": "embedded", "path": path}, ledger={"path": None})
    oracle = Oracle(Thrifty(config, embedder=embedder, store=store, ledger=Ledger(),
                            prices=PriceTable(config.prices, use_litellm=False)))
    oracle.ask(QUESTION)
    first = oracle.calls
    oracle.ask(QUESTION)
    assert oracle.calls == first, "the cache does not work after opening the file"
    store.close()


@examples(40)
@given(damage=st.one_of(
    st.tuples(st.just("random"), st.binary(min_size=0, max_size=4096)),
    st.tuples(st.just("truncated"), st.floats(0.0, 0.999)),
    st.tuples(st.just("flipped"), st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)),
                                           min_size=1, max_size=30)),
    st.tuples(st.just("schema"), st.integers(0, 4)),
))
def test_embedded_store_corrupt_truncated_or_foreign_file_gives_a_working_cache(
    embedder: SentenceTransformerEmbedder, valid_store_file: bytes, damage: tuple[str, Any]
) -> None:
    count("store_files")
    kind, how = damage
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.sqlite3"
        if kind == "random":
            path.write_bytes(how)
        elif kind == "truncated":
            path.write_bytes(valid_store_file[:int(len(valid_store_file) * how)])
        elif kind == "flipped":
            blob = bytearray(valid_store_file)
            for where, byte in how:
                blob[int(len(blob) * where)] = byte
            path.write_bytes(bytes(blob))
        else:
            foreign_schema(path, how)
        assert_working_cache(embedder, path)


# ---------------------------------------------------------------------------------------------
# garbage under thrifty's Redis prefix

GARBAGE_HASHES: list[dict[str, Any]] = [
    {},  # (a hash cannot be empty: written as a lone field below)
    {"v": "1"},
    {"v": "2", "answer": json.dumps({"role": "assistant", "content": "WRONG"})},
    {"v": "1", "answer": "not json", "scope": "{scope}", "exact_key": "{key}", "text": "t", "created_at": "0",
     "cost": "0", "tokens": "0"},
    {"v": "1", "answer": "[1, 2]", "scope": "{scope}", "exact_key": "{key}", "text": "t", "created_at": "0",
     "cost": "0", "tokens": "0"},
    {"v": "1", "answer": json.dumps({"content": "WRONG"}), "scope": "{scope}", "exact_key": "{key}", "text": "t",
     "created_at": "yesterday", "cost": "free", "tokens": "many"},
    {"v": "1", "answer": json.dumps({"content": "WRONG"}), "scope": "{scope}", "exact_key": "{key}", "text": "t",
     "created_at": "0", "expires_at": "soon", "cost": "0", "tokens": "0"},
    {"v": "1", "answer": json.dumps({"content": "WRONG"}), "scope": "other-scope", "exact_key": "{key}", "text": "t",
     "created_at": "0", "cost": "0", "tokens": "0"},
    {"v": "1", "answer": json.dumps({"content": "WRONG"}), "scope": "{scope}", "exact_key": "another-key",
     "text": "t", "created_at": "0", "cost": "0", "tokens": "0"},
    {"v": "1", "answer": b"\xff\xfe\x00garbage", "scope": b"\xff", "exact_key": "{key}", "created_at": "0"},
    {"v": "1", "answer": json.dumps({"content": "WRONG"}), "scope": "{scope}", "exact_key": "{key}", "text": "t",
     "created_at": "0", "cost": "0", "vector_384": b"\x00\x01short"},  # no tokens, a vector of the wrong size
    {"v": "1", "answer": "x" * 2_000_000, "scope": "{scope}", "exact_key": "{key}", "text": "t" * 500_000,
     "created_at": "0", "cost": "0", "tokens": "0"},
]
FORGED_ELSEWHERE = 8  # well-formed but for another exact key: garbage only at the request's own key
WRONG_TYPES = ["string", "list", "set", "zset", "stream"]


def plant(client: redis.Redis, key: str, kind: Any, scope: str, exact_key: str, vector: bytes | None) -> None:
    client.delete(key)
    if kind == "string":
        client.set(key, "WRONG" * 1000)
    elif kind == "list":
        client.rpush(key, "WRONG", "v", "1")
    elif kind == "set":
        client.sadd(key, "WRONG")
    elif kind == "zset":
        client.zadd(key, {"WRONG": 1.0})
    elif kind == "stream":
        client.xadd(key, {"answer": "WRONG"})
    else:
        fields = {k: (v.replace("{scope}", scope).replace("{key}", exact_key) if isinstance(v, str) else v)
                  for k, v in GARBAGE_HASHES[kind].items()} or {"junk": "WRONG"}
        if vector is not None and "vector_384" not in fields:
            fields["vector_384"] = vector  # findable by meaning, so the search path meets it too
        client.hset(key, mapping=fields)


@pytest.fixture(scope="module")
def question_vector(embedder: SentenceTransformerEmbedder) -> bytes:
    import numpy as np

    vector = embedder.embed(["What is the refund policy?"])[0]
    assert vector is not None
    return np.asarray(vector, dtype=np.float32).tobytes()


@examples(40)
@given(garbage=st.lists(st.tuples(st.sampled_from(["own", "lru", "block", "other", "near"]),
                                  st.one_of(st.sampled_from(WRONG_TYPES), st.integers(0, len(GARBAGE_HASHES) - 1))),
                        min_size=1, max_size=4),
       asked=st.sampled_from(["What is the refund policy?", "what's the refund policy", "How do refunds work?"]),
       tenant=st.one_of(st.none(), st.just("\ud800"),
                        st.lists(st.sampled_from(REDISEARCH), min_size=1, max_size=6).map("".join)))
def test_redis_garbage_under_the_prefix_is_skipped_never_served(
    embedder: SentenceTransformerEmbedder, oracle: Oracle, redis_url: str, question_vector: bytes,
    garbage: list[tuple[str, Any]], asked: str, tenant: str | None
) -> None:
    """Keys of the wrong type, hashes with missing or garbled fields, huge values - at the exact key
    of the request, in the LRU set, as blocks, and beside it where vector search finds them: a
    lookup skips them (a miss, the stand-in's own answer), never serves them, never raises; and
    the cache still stores and serves the request's own answer when its key can be written. The
    asking tenant's name may be RediSearch syntax: the plain tenant's answer (stored first) is
    never served to it."""
    count("redis")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    g = make_gate(embedder, cache={"backend": "redis", "redis_url": redis_url}, redis={"key_prefix": prefix},
                  verifier=oracle.gate.verifier)
    request = {**QUESTION, "messages": [{"role": "user", "content": asked}]}
    if tenant is not None:
        request["metadata"] = {"tenant": tenant, "namespace": tenant}
    canon = canonicalize(request, g.settings)
    client = redis.Redis.from_url(redis_url)
    user = Oracle(g)
    try:
        user.ask({**QUESTION, "messages": [{"role": "user", "content": "warm up the index"}]})
        user.ask({**QUESTION, "metadata": {"tenant": "plain"}})
        for where, kind in garbage:
            key = {"own": f"{prefix}:cache:e:{canon.exact_key}", "lru": f"{prefix}:cache:lru",
                   "block": f"{prefix}:cache:b:{canon.exact_key}", "other": f"{prefix}:cache:e:{uuid.uuid4().hex}",
                   "near": f"{prefix}:cache:e:near-{uuid.uuid4().hex}"}[where]
            if where == "block" and not isinstance(kind, str):
                client.delete(key)
                client.hset(key, mapping={"x": "not json", "y": json.dumps({"stored_key": 1}), "z": "[]"})
                continue
            if where == "near" and kind == FORGED_ELSEWHERE:
                kind = FORGED_ELSEWHERE - 1  # a well-formed entry of another request is not garbage: other scope
            plant(client, key, kind, canon.scope, canon.exact_key, question_vector if where == "near" else None)
        for _ in range(2):
            user.ask(request)  # check(): every answer is the stub's own, every hit rightly sourced
        assert g.cache.storage.available  # type: ignore[attr-defined]
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        with contextlib.suppress(redis.exceptions.RedisError):
            client.ft(f"{prefix}:cache:idx:384").dropindex()
        client.close()


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print("\nbad-input examples run:", json.dumps(STATS, sort_keys=True))

