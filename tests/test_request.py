from __future__ import annotations

from typing import Any

import pytest
from conftest import chat
from thrifty.request import InvalidRequest, canonicalize


def scope(request: dict[str, Any]) -> str:
    return canonicalize(request).scope


def test_identical_requests_share_scope_and_key() -> None:
    a, b = canonicalize(chat("What is our refund policy?")), canonicalize(chat("what is our refund policy"))
    assert a.scope == b.scope
    assert a.exact_key == b.exact_key
    assert a.semantic_text == "What is our refund policy?"


@pytest.mark.parametrize("change", [
    {"model": "gpt-4o"},
    {"temperature": 0.9},
    {"max_tokens": 50},
    {"response_format": {"type": "json_object"}},
    {"tools": [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}]},
    {"tool_choice": "required"},
    {"seed": 7},
    {"stop": ["\n"]},
    {"metadata": {"tenant": "acme"}},
])
def test_every_output_affecting_part_changes_the_scope(change: dict[str, Any]) -> None:
    base = chat("What is our refund policy?")
    assert scope(base) != scope({**base, **change})


def test_system_prompt_and_earlier_turns_are_scope() -> None:
    base = chat("And for orders placed online?")
    assert scope(base) != scope(chat("And for orders placed online?", system="You are a pirate."))
    history_a = [{"role": "user", "content": "What's the refund policy for shoes?"},
                 {"role": "assistant", "content": "30 days."}]
    history_b = [{"role": "user", "content": "What's the refund policy for gift cards?"},
                 {"role": "assistant", "content": "None."}]
    assert scope(chat("And for orders placed online?", history=history_a)) != scope(
        chat("And for orders placed online?", history=history_b))


def test_metadata_that_does_not_change_the_answer_is_not_scope() -> None:
    base = chat("What is our refund policy?")
    assert scope(base) == scope({**base, "metadata": {"agent": "billing", "workflow_id": "w1"}})


def test_list_content_text_parts_are_text() -> None:
    req = chat("ignored")
    req["messages"][-1]["content"] = [{"type": "text", "text": "What is our"},
                                      {"type": "text", "text": "refund policy?"}]
    canon = canonicalize(req)
    assert canon.semantic_text == "What is our\nrefund policy?"


def test_images_are_exact_only_and_part_of_the_key() -> None:
    def with_image(url: str) -> dict[str, Any]:
        req = chat("ignored")
        req["messages"][-1]["content"] = [{"type": "text", "text": "What is in this picture?"},
                                          {"type": "image_url", "image_url": {"url": url}}]
        return req

    a, b = canonicalize(with_image("https://x/cat.png")), canonicalize(with_image("https://x/dog.png"))
    assert a.semantic_text is None and a.skip_semantic == "non_text_content"
    assert a.exact_key != b.exact_key and a.scope != b.scope


def test_final_turn_not_from_the_user_is_exact_only() -> None:
    req = chat("What is the weather?")
    req["messages"].append({"role": "tool", "tool_call_id": "1", "content": "sunny"})
    canon = canonicalize(req)
    assert canon.semantic_text is None and canon.skip_semantic == "last_message_not_user"


@pytest.mark.parametrize("bad", ["not a dict", ["a", "list"], None])
def test_what_is_not_a_request_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="a chat request is a mapping"):
        canonicalize(bad)


@pytest.mark.parametrize("bad", [{}, {"messages": []}, {"messages": "hi"}, {"messages": ["hi"]}])
def test_unreadable_messages_are_marked_invalid_but_keep_their_owners(bad: dict[str, Any]) -> None:
    canon = canonicalize({**bad, "model": "gpt-4o", "metadata": {"tenant": "acme", "agent": "triage"}})
    assert canon.invalid is not None and canon.semantic_text is None
    assert (canon.model, canon.tenant, canon.namespace) == ("gpt-4o", "acme", "triage")
    other = canonicalize({**bad, "model": "gpt-4o", "metadata": {"tenant": "globex", "agent": "triage"}})
    assert other.exact_key != canon.exact_key  # never one key for all invalid requests


def test_litellm_style_and_metadata_controls() -> None:
    canon = canonicalize(chat("hi", cache={"no-cache": True, "no-store": True, "ttl": 60, "namespace": "faq"}))
    assert canon.no_cache and canon.no_store and canon.ttl_seconds == 60 and canon.namespace == "faq"
    canon = canonicalize(chat("hi", metadata={"agent": "billing", "thrifty": {"no_store": True}}))
    assert canon.namespace == "billing" and canon.no_store and not canon.no_cache


def test_personal_requests_are_scoped_to_their_user() -> None:
    a = canonicalize(chat("Email my invoice to jane.doe@example.com", user="u1"))
    b = canonicalize(chat("Email my invoice to jane.doe@example.com", user="u2"))
    assert a.personal == ("email",)
    assert a.scope != b.scope
    plain_a = canonicalize(chat("What is the refund policy?", user="u1"))
    plain_b = canonicalize(chat("What is the refund policy?", user="u2"))
    assert plain_a.scope == plain_b.scope  # no personal data: users share answers
