"""``CostRouter``: a LangChain chat model made of the user's own chat models, cheapest first, with
thrifty's four parts in front of them.

    router = CostRouter([ChatOpenAI(model="gpt-4o-mini"), ChatOpenAI(model="gpt-4o")])
    chain = prompt | router | StrOutputParser()          # wherever a chat model goes

Every call - ``invoke``, ``ainvoke``, ``batch``, ``abatch``, ``stream``, ``astream`` - goes through
thrifty's gate: an answer from the cache (replayed as chunks for a stream), or the answer of an
identical call in flight (parallel branches of one graph included), or a call on the tier the
router picks, with its worst case reserved against every budget (a refusal raises
``thrifty.BudgetExceeded``). An answer that fails validation - empty, a refusal, JSON that does not
parse, structured output that does not fit its schema, your ``validator`` - is retried on the next
tier (not for streams, whose chunks already went out). ``bind_tools`` and
``with_structured_output`` are applied to every tier's own model, as each provider formats tools
and structured output its own way. What was decided is in the answer's
``response_metadata["thrifty"]``, and the tier's own run is tagged ``thrifty:tier:<name>``.

Tiers are named by the user (``CostRouter({"cheap": m1, "premium": m2})``) or after their models;
in thrifty's books a tier's model is ``<tier>/<model name>``, priced as the model.

Shadow audits (``cache.audit_rate``): a semantic hit is audited by the gate (``call`` / ``acall``,
or ``audit`` / ``aaudit`` for streams) with the tier whose books model the auditor asks for (the one
that wrote the stored answer; ``cache.audit_model`` names a tier, or ``<tier>/<model>``), called
as the router's child run. A wrong answer: ``router.report_wrong(input, config)`` with the input and
config of the call that got it (:meth:`thrifty.Thrifty.report_wrong`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, ensure_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr
from thrifty import Completion, Reported, Reused, Thrifty, ThriftySettings, Ticket
from thrifty.router import Router, Validator
from thrifty.settings import RouterSettings, TierSettings

from .gate import gate_for
from .translate import THRIFTY, completion_of, message_of, model_name_of, owners_of, router_request

_PARSE_FAILED = "parsing_error"
_OWNERS = "thrifty_owners"  # a keyword carrying a stream's metadata to _stream (see CostRouter.stream)


class CostRouter(BaseChatModel):
    """A chat model routing each call to the cheapest of ``models`` that answers it well, through
    thrifty's cache, single-flight, router and budgets (see the module docstring).

    Args:
        models: the tiers' chat models, cheapest first, or a mapping of tier name to model.
        settings: a :class:`~thrifty.ThriftySettings` or a YAML path; default: the environment and
            the defaults, with the gate shared by the adapter's parts.
        gate: an existing :class:`~thrifty.Thrifty` to use (settings are then ignored).
        validator: your own check of an answer, ``(completion, request) -> bool | str``; a failing
            answer is retried on the next tier.
        **router_settings: :class:`~thrifty.settings.RouterSettings` fields for this router
            (``scorer``, ``thresholds``, ``quality``, ``premium_share``, ``overrides``, ...);
            default: those of the settings.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tiers: list[tuple[str, Any]] = Field(default_factory=list)
    route: str = ""
    bound: dict[str, Any] = Field(default_factory=dict)
    structured: bool = False
    _gate: Thrifty = PrivateAttr()

    def __init__(self, models: Sequence[BaseChatModel] | Mapping[str, BaseChatModel] | None = None, *,
                 settings: ThriftySettings | str | Path | None = None, gate: Thrifty | None = None,
                 validator: Validator | None = None, **fields: Any) -> None:
        router_fields = {k: fields.pop(k) for k in list(fields) if k in RouterSettings.model_fields}
        if models is None:  # a copy LangChain or pydantic makes of a built router
            super().__init__(**fields)
            return
        named = list(models.items()) if isinstance(models, Mapping) else _named(models)
        if not named:
            raise ValueError("CostRouter needs at least one chat model")
        tiers = [(name, _uncached(model)) for name, model in named]
        route = "auto[" + ",".join(f"{name}/{model_name_of(model)}" for name, model in tiers) + "]"
        fields.setdefault("cache", False)  # thrifty is the cache: LangChain's own must not answer first
        super().__init__(tiers=tiers, route=route, **fields)
        self._gate = gate_for(settings, gate=gate)
        base = self._gate.settings.router.model_dump(exclude={"tiers", "route_models", "enabled"})
        router_settings = RouterSettings(**{
            **base, **router_fields, "enabled": True, "route_models": [route],
            "tiers": [TierSettings(name=name, model=f"{name}/{model_name_of(model)}") for name, model in tiers]})
        self._gate.add_router(Router.from_settings(router_settings, self._gate.embedder, prices=self._gate.prices,
                                                   validator=_with_structured_check(validator)))

    @property
    def gate(self) -> Thrifty:
        """The thrifty gate this router goes through."""
        return self._gate

    @property
    def _llm_type(self) -> str:
        return "thrifty-cost-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"route": self.route, "tiers": [name for name, _ in self.tiers]}

    # ------------------------------------------------------------------ whole answers
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, run_manager, kwargs)
        calls: list[str] = []
        upstream = self._upstream(messages, stop, run_manager, kwargs, calls)
        return self._result(self._gate.call(request, upstream), calls)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, run_manager, kwargs)
        calls: list[str] = []
        upstream = self._aupstream(messages, stop, run_manager, kwargs, calls)
        return self._result(await self._gate.acall(request, upstream), calls)

    def _upstream(self, messages: list[BaseMessage], stop: list[str] | None,
                  run_manager: CallbackManagerForLLMRun | None, kwargs: dict[str, Any],
                  calls: list[str]) -> Callable[[Mapping[str, Any]], Completion]:
        """The call of the tier a thrifty request's ``model`` names (a routed call, or an audit),
        as the router's child run; each tier called is added to ``calls``."""
        def upstream(call: Mapping[str, Any]) -> Completion:
            name, tier = self._tier(call["model"])
            calls.append(name)
            output = tier.invoke(messages, stop=stop, config=self._child_config(run_manager, name), **kwargs)
            return self._completion(output, call["model"], name)

        return upstream

    def _aupstream(self, messages: list[BaseMessage], stop: list[str] | None,
                   run_manager: AsyncCallbackManagerForLLMRun | None, kwargs: dict[str, Any],
                   calls: list[str]) -> Callable[[Mapping[str, Any]], Awaitable[Completion]]:
        """Async twin of :meth:`_upstream`."""
        async def upstream(call: Mapping[str, Any]) -> Completion:
            name, tier = self._tier(call["model"])
            calls.append(name)
            output = await tier.ainvoke(messages, stop=stop, config=self._child_config(run_manager, name), **kwargs)
            return self._completion(output, call["model"], name)

        return upstream

    # ------------------------------------------------------------------ streams
    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        """As every chat model's; the call's metadata reaches thrifty (LangChain hands a
        model's ``_stream`` no run manager, ``BaseChatModel.stream``)."""
        yield from super().stream(input, config, stop=stop, **{_OWNERS: _config_owners(config)}, **kwargs)

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        """Async twin of :meth:`stream`."""
        async for chunk in super().astream(input, config, stop=stop, **{_OWNERS: _config_owners(config)}, **kwargs):
            yield chunk

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if self.structured:  # a structured tier answers whole: nothing to stream but the one answer
            yield from _replay(self._generate(messages, stop, run_manager, **kwargs).generations[0].message)
            return
        request = self._request(messages, stop, run_manager, kwargs)
        decision = self._gate.begin(request)
        if isinstance(decision, Reused):
            yield from _replay(message_of(decision.answer, _reused_info(decision), reused=True))
            self._gate.audit(request, decision, self._upstream(messages, stop, run_manager, dict(kwargs), []))
            return
        name, tier = self._tier(decision.model or "")
        chunks: list[AIMessageChunk] = []
        try:
            for chunk in tier.stream(messages, stop=stop, config=self._child_config(run_manager, name), **kwargs):
                if isinstance(chunk, AIMessageChunk):  # LangChain reports each chunk to the callbacks
                    chunks.append(chunk)
                    yield ChatGenerationChunk(message=chunk)
        except BaseException as exc:
            decision.fail(exc, mid_stream=bool(chunks))
            raise
        completion = self._completion(_whole(chunks), decision.model, name)
        decision.complete(completion, rejected=decision.validation_failure(completion))
        yield _last_chunk(_call_info(decision, [name]))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.structured:
            result = await self._agenerate(messages, stop, run_manager, **kwargs)
            for chunk in _replay(result.generations[0].message):
                yield chunk
            return
        request = self._request(messages, stop, run_manager, kwargs)
        decision = await self._gate.abegin(request)
        if isinstance(decision, Reused):
            for chunk in _replay(message_of(decision.answer, _reused_info(decision), reused=True)):
                yield chunk
            self._gate.aaudit(request, decision, self._aupstream(messages, stop, run_manager, dict(kwargs), []))
            return
        name, tier = self._tier(decision.model or "")
        chunks: list[AIMessageChunk] = []
        try:
            async for chunk in tier.astream(messages, stop=stop, config=self._child_config(run_manager, name),
                                            **kwargs):
                if isinstance(chunk, AIMessageChunk):  # LangChain reports each chunk to the callbacks
                    chunks.append(chunk)
                    yield ChatGenerationChunk(message=chunk)
        except BaseException as exc:
            await decision.afail(exc, mid_stream=bool(chunks))
            raise
        completion = self._completion(_whole(chunks), decision.model, name)
        await decision.acomplete(completion, rejected=decision.validation_failure(completion))
        yield _last_chunk(_call_info(decision, [name]))

    # ------------------------------------------------------------------ wrong-answer reports
    def report_wrong(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                     stop: list[str] | None = None, **kwargs: Any) -> Reported:
        """The answer the call ``invoke(input, config, stop=stop, **kwargs)`` got is wrong for it:
        never serve it that answer again (see :meth:`thrifty.Thrifty.report_wrong`). The tenant
        and other owners come from ``config``'s metadata, as for the call. Never raises."""
        try:
            request = self._report_request(input, config, stop, kwargs)
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        return self._gate.report_wrong(request)

    async def areport_wrong(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                            stop: list[str] | None = None, **kwargs: Any) -> Reported:
        """Async twin of :meth:`report_wrong`."""
        try:
            request = self._report_request(input, config, stop, kwargs)
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        return await self._gate.areport_wrong(request)

    def _report_request(self, input: LanguageModelInput, config: RunnableConfig | None, stop: list[str] | None,
                        kwargs: dict[str, Any]) -> dict[str, Any]:
        messages = self._convert_input(input).to_messages()
        return router_request(self.route, messages, stop, dict(kwargs), self.bound, _config_owners(config))

    # ------------------------------------------------------------------ tools and structured output
    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """The router with ``tools`` bound to every tier's own model (each formats them its way);
        the tools are part of the cache scope."""
        tiers = [(name, model.bind_tools(tools, tool_choice=tool_choice, **kwargs)) for name, model in self.tiers]
        bound = {**self.bound, "tools": [convert_to_openai_tool(t) for t in tools]}
        if tool_choice is not None:
            bound["tool_choice"] = tool_choice
        return self._derived(tiers=tiers, bound=bound)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False,  # type: ignore[override]
                               **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """Structured output through every tier's own ``with_structured_output``. An answer that
        does not fit ``schema`` is retried on the next tier; a cached answer is parsed again
        into ``schema``."""
        tiers = [(name, model.with_structured_output(schema, include_raw=True, **kwargs))
                 for name, model in self.tiers]
        described = convert_to_openai_tool(schema) if not isinstance(schema, dict) else schema
        router = self._derived(tiers=tiers, bound={**self.bound, "response_format": {"schema": described, **{
            k: v for k, v in kwargs.items() if isinstance(v, (str, bool, int, float))}}}, structured=True)
        return router | RunnableLambda(_structured_result(schema, include_raw))

    # ------------------------------------------------------------------ translation
    def _derived(self, **changes: Any) -> CostRouter:
        copy = self.model_copy(update=changes)
        copy._gate = self._gate
        return copy

    def _request(self, messages: Sequence[BaseMessage], stop: list[str] | None,
                 run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
                 kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call as thrifty's request. Takes :data:`_OWNERS` out of ``kwargs`` (they go on to
        the tier): the owners :meth:`stream` found, when there is no run manager to read them from."""
        passed = kwargs.pop(_OWNERS, None) or {}
        metadata = owners_of(run_manager.metadata) if run_manager is not None else dict(passed)
        return router_request(self.route, messages, stop, kwargs, self.bound, metadata)

    def _tier(self, model: str) -> tuple[str, Any]:
        """The tier whose books model name is ``model`` ("<tier>/<model name>")."""
        name = model.split("/", 1)[0]
        for tier_name, tier in self.tiers:
            if tier_name == name:
                return tier_name, tier
        raise LookupError(f"thrifty routed to tier {name!r}, which this router does not have")

    @staticmethod
    def _child_config(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
                      tier: str) -> RunnableConfig:
        """The tier's call as a child run of the router's, tagged with the tier: the handlers,
        tags and metadata the router's run passes on (as ``ParentRunManager.get_child`` does;
        a model's run manager has no such method, ``langchain_core/callbacks/manager.py``)."""
        config = RunnableConfig(tags=[f"thrifty:tier:{tier}"], metadata={"thrifty_tier": tier})
        if run_manager is not None:
            manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
            manager.set_handlers(run_manager.inheritable_handlers)
            manager.add_tags(run_manager.inheritable_tags)
            manager.add_metadata(run_manager.inheritable_metadata)
            config["callbacks"] = manager
        return config

    def _completion(self, output: Any, model: str | None, tier: str) -> Completion:
        """A tier's answer as a Completion: its message, and for a structured tier the parsed
        value (as JSON) or why it could not be parsed."""
        extra: dict[str, Any] = {"tier": tier}
        if self.structured and isinstance(output, Mapping):
            message = output.get("raw")
            error = output.get(_PARSE_FAILED)
            parsed = output.get("parsed")
            if error is not None or parsed is None:
                extra[_PARSE_FAILED] = str(error or "nothing parsed")
            else:
                extra["parsed"] = _jsonable(parsed)
            output = message
        if not isinstance(output, AIMessage):
            raise TypeError(f"tier {tier!r} answered a {type(output).__name__}, not an AIMessage")
        return completion_of(output, model=model, extra=extra)

    def _result(self, result: Completion | Reused, calls: list[str]) -> ChatResult:
        answer = result.answer
        if isinstance(result, Reused):
            info = _reused_info(result)
        else:
            info = {"decision": "call", "tier": answer.get("tier"), "model": result.model}
            if len(calls) > 1:
                info["escalated_from"] = calls[:-1]
        for key in ("parsed", _PARSE_FAILED):  # a structured answer's value, for with_structured_output
            if key in answer:
                info[key] = answer[key]
        message = message_of(answer, info, reused=isinstance(result, Reused))
        return ChatResult(generations=[ChatGeneration(message=message)])


def _config_owners(config: RunnableConfig | None) -> dict[str, Any]:
    """The owners in a call's config (merged with the chain's, as LangChain merges them)."""
    return owners_of(ensure_config(config).get("metadata") or {})


def _named(models: Sequence[BaseChatModel]) -> list[tuple[str, BaseChatModel]]:
    """Tier names after the models ("gpt-4o-mini", "gpt-4o"), numbered where they repeat."""
    names: list[str] = []
    for model in models:
        base = model_name_of(model).replace("/", "-")
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return list(zip(names, models))


def _uncached(model: Any) -> Any:
    """The model, with LangChain's own cache off: thrifty decides what is reused."""
    if isinstance(model, BaseChatModel):
        return model.model_copy(update={"cache": False})
    return model


def _with_structured_check(validator: Validator | None) -> Validator:
    def check(completion: Completion, request: Mapping[str, Any]) -> bool | str | None:
        failed = completion.answer.get(_PARSE_FAILED)
        if failed:
            return f"structured output does not fit its schema: {failed}"
        return validator(completion, request) if validator is not None else True

    return check


def _reused_info(reused: Reused) -> dict[str, Any]:
    info: dict[str, Any] = {"decision": "joined" if reused.source == "joined" else "cache_hit",
                            "source": reused.source, "saved_cost": reused.saved_cost}
    if reused.similarity is not None:
        info["similarity"] = round(reused.similarity, 4)
    return info


def _call_info(ticket: Ticket, calls: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {"decision": "call", "tier": calls[-1], "model": ticket.model}
    if ticket.route.reason != "passthrough":
        info["route"] = ticket.route.reason
    return info


def _whole(chunks: Sequence[AIMessageChunk]) -> AIMessage:
    """The streamed chunks as one message."""
    if not chunks:
        return AIMessage(content="")
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    return AIMessage(content=merged.content, tool_calls=merged.tool_calls, usage_metadata=merged.usage_metadata,
                     response_metadata=merged.response_metadata, additional_kwargs=merged.additional_kwargs)


def _replay(message: BaseMessage) -> Iterator[ChatGenerationChunk]:
    """A whole answer as a stream: its text word by word, then tool calls, usage and metadata."""
    text = message.content if isinstance(message.content, str) else ""
    words = text.split(" ")
    for index, word in enumerate(words):
        piece = word if index == len(words) - 1 else word + " "
        if piece:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
    tool_calls = getattr(message, "tool_calls", None) or []
    yield ChatGenerationChunk(message=AIMessageChunk(
        content="" if text or not message.content else message.content,
        tool_call_chunks=[{"name": c["name"], "args": json.dumps(c["args"]), "id": c.get("id"), "index": i,
                           "type": "tool_call_chunk"} for i, c in enumerate(tool_calls)],
        usage_metadata=getattr(message, "usage_metadata", None), response_metadata=message.response_metadata,
        chunk_position="last"))


def _last_chunk(info: Mapping[str, Any]) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata={THRIFTY: dict(info)}))


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def _structured_result(schema: Any, include_raw: bool) -> Callable[[AIMessage], Any]:
    """From the router's message to what ``with_structured_output`` returns: the parsed value,
    rebuilt as ``schema`` when it is a pydantic model (or ``{"raw", "parsed", "parsing_error"}``)."""
    def result(message: AIMessage) -> Any:
        info = message.response_metadata.get(THRIFTY) or {}
        data = info.get("parsed")
        error = info.get(_PARSE_FAILED)
        validate = getattr(schema, "model_validate", None)
        parsed = validate(data) if callable(validate) and data is not None else data
        if include_raw:
            return {"raw": message, "parsed": parsed, "parsing_error": error}
        if error is not None:
            raise ValueError(f"structured output does not fit its schema: {error}")
        return parsed

    return result
