"""``ThriftyCallbackHandler``: thrifty's budgets and ledger for chains that keep their own models.

    handler = ThriftyCallbackHandler(budget={"limits": [{"scope": "tenant", "usd": 5, "window": "day"}]})
    chain.invoke(inputs, config={"callbacks": [handler], "metadata": {"tenant": "acme"}})

Before each chat model (or LLM) call, ``on_chat_model_start`` reserves the call's worst case
against every budget that applies and raises ``thrifty.BudgetExceeded`` when it does not fit: the
handler sets ``raise_error`` (LangChain then propagates it and the model is not called) and
``run_inline`` (it runs in the caller's thread, also for async runs, so the refusal reaches the
caller; ``langchain_core/callbacks/manager.py``, ``handle_event`` / ``_ahandle_event_for_handler``).
When the call ends, its real cost - from the answer's ``usage_metadata``, else the
``token_usage`` in ``llm_output`` - is settled and recorded in thrifty's ledger by agent (the
run's ``agent`` metadata or LangGraph node), workflow (a metadata key such as ``workflow_id``,
else the root run's id) and tenant; a failed call releases its reservation, and so does an answer
LangChain's cache gave (no call was made). LangChain runs these callbacks before its cache lookup:
a call the budget refuses is refused even when the cache would have answered it.

Runs of a :class:`~langchain_ext.CostRouter`, and the tier calls it makes, are thrifty's own and
already in its books: the handler leaves them alone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from thrifty import Completion, Thrifty, ThriftySettings, Ticket

from .gate import gate_for
from .translate import MODEL_FIELDS, completion_of, openai_messages, owners_of

_TIER_TAG = "thrifty:tier:"


class ThriftyCallbackHandler(BaseCallbackHandler):
    """Budgets and the ledger for the model calls of any chain (see the module docstring).

    Args:
        settings: a :class:`~thrifty.ThriftySettings` or a YAML path; default: the environment
            and the defaults, with the gate shared by the adapter's parts.
        gate: an existing :class:`~thrifty.Thrifty` to use (settings are then ignored).
        **overrides: settings fields, e.g. ``budget={"limits": [...]}``.
    """

    raise_error = True  # a budget refusal must stop the call
    run_inline = True  # ... and reach the caller, from async runs too

    def __init__(self, settings: ThriftySettings | str | Path | None = None, *, gate: Thrifty | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        self.gate = gate_for(settings, gate=gate, **overrides)
        self._tickets: dict[UUID, Ticket] = {}
        self._roots: dict[UUID, UUID] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ runs and their roots
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            self._roots[run_id] = self._roots.get(parent_run_id, parent_run_id) if parent_run_id else run_id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._roots.pop(run_id, None)

    # ------------------------------------------------------------------ model calls
    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *,
                            run_id: UUID, parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Reserve the call's worst case; ``BudgetExceeded`` stops it."""
        if _thriftys_own(serialized, tags):
            return
        self._begin(messages[0] if messages else [], run_id, parent_run_id, metadata, kwargs)

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """A text model's call: the same, with its prompt as the question."""
        if _thriftys_own(serialized, tags):
            return
        self._begin([HumanMessage(prompts[0] if prompts else "")], run_id, parent_run_id, metadata, kwargs)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Settle the call at its real cost and record it; an answer from LangChain's cache was no
        call: its reservation is given back and nothing is recorded."""
        ticket = self._take(run_id)
        if ticket is None:
            return
        if _from_a_cache(response):
            ticket.abandon()
        else:
            ticket.complete(_completion(response, ticket.model))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Release the failed call's reservation; record the call, at no cost."""
        ticket = self._take(run_id)
        if ticket is not None:
            ticket.fail(error)

    # ------------------------------------------------------------------ translation
    def _begin(self, messages: Sequence[BaseMessage], run_id: UUID, parent_run_id: UUID | None,
               metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> None:
        params = kwargs.get("invocation_params") or {}
        with self._lock:
            root = self._roots.get(parent_run_id, parent_run_id) if parent_run_id else run_id
        owners = owners_of(metadata or {})
        if not any(key in owners for key in self.gate.settings.budget.workflow_keys):
            owners["workflow_id"] = str(root)
        model = next((str(params[f]) for f in MODEL_FIELDS if isinstance(params.get(f), str)), None)
        request: dict[str, Any] = {"model": model, "messages": openai_messages(messages), "metadata": owners}
        for field in ("max_tokens", "max_completion_tokens", "n", "tools"):
            if params.get(field) is not None:
                request[field] = params[field]
        ticket = self.gate.account(request)
        with self._lock:
            self._tickets[run_id] = ticket

    def _take(self, run_id: UUID) -> Ticket | None:
        with self._lock:
            return self._tickets.pop(run_id, None)


def _thriftys_own(serialized: Mapping[str, Any] | None, tags: Sequence[str] | None) -> bool:
    """A CostRouter's run, or a tier call it makes: already in thrifty's books."""
    ident = (serialized or {}).get("id") or []
    named = (serialized or {}).get("name")
    return (bool(ident) and ident[-1] == "CostRouter") or named == "CostRouter" or any(
        tag.startswith(_TIER_TAG) for tag in tags or ())


def _from_a_cache(response: LLMResult) -> bool:
    """Whether LangChain answered from its cache: it marks such answers with a zero
    ``usage_metadata["total_cost"]`` (``BaseChatModel._convert_cached_generations``)."""
    first = response.generations[0][0] if response.generations and response.generations[0] else None
    message = first.message if isinstance(first, ChatGeneration) else None
    usage: Mapping[str, Any] = (message.usage_metadata or {}) if isinstance(message, AIMessage) else {}
    return usage.get("total_cost") == 0


def _completion(response: LLMResult, model: str | None) -> Completion:
    """The call's answer with its token counts: the message's usage, else ``llm_output``'s."""
    first = response.generations[0][0] if response.generations and response.generations[0] else None
    if isinstance(first, ChatGeneration) and isinstance(first.message, AIMessage):
        completion = completion_of(first.message, model=model)
    else:
        text = first.text if first is not None else ""
        completion = Completion(answer={"text": text}, text=text, model=model)
    usage = (response.llm_output or {}).get("token_usage") or {}
    if not (completion.prompt_tokens or completion.completion_tokens) and isinstance(usage, Mapping):
        completion = dataclasses.replace(completion, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                             completion_tokens=int(usage.get("completion_tokens") or 0))
    return completion
