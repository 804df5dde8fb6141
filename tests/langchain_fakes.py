"""A stand-in LangChain chat model for the adapter's unit tests: it answers like the OpenAI
stand-in (``[<model>] Answer to: <question>``), counts its calls, can be held until a test lets
it answer, and follows the same directives in the question:

* ``[refuse-if:<text>]``: "I'm sorry, I can't help with that." when the model name contains it;
* ``[fail:<status>]``: raise an error with that HTTP status;
* ``[tool:<name>]``: with tools bound, answer with a call of tool ``<name>``.

The integration tests use LangChain's real ``ChatOpenAI`` against the OpenAI stand-in instead.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

_DIRECTIVE = re.compile(r"\[(refuse-if|fail|tool):([^\]]+)\]")


class UpstreamFailed(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"stand-in failure {status_code}")
        self.status_code = status_code


class Calls:
    """The questions a set of stand-in models answered, in order (shared by their copies)."""

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.models: list[str] = []
        self._lock = threading.Lock()

    def add(self, model: str, question: str) -> None:
        with self._lock:
            self.models.append(model)
            self.questions.append(question)

    def __len__(self) -> int:
        return len(self.questions)


class EchoChatModel(BaseChatModel):
    """See the module docstring. ``calls`` records the questions it answered (copies share it);
    ``hold`` is an event it waits for before answering (None: answer at once)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = "echo-mini"
    calls: Any = Field(default_factory=Calls)
    hold: Any = None

    @property
    def _llm_type(self) -> str:
        return "echo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable[Any, Any]:
        """As real chat models do: the tools, formatted, become keywords of every call."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, **({"tool_choice": tool_choice} if tool_choice else {}), **kwargs)

    def _answer(self, messages: list[BaseMessage], tools: Sequence[dict[str, Any]] = ()) -> AIMessage:
        question = next((str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        self.calls.add(self.model_name, question)
        directives = dict(_DIRECTIVE.findall(question))
        plain = _DIRECTIVE.sub("", question).strip()
        if "fail" in directives:
            raise UpstreamFailed(int(directives["fail"]))
        usage = {"input_tokens": 10 + len(question) // 4, "output_tokens": 5 + len(plain) // 4}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        metadata = {"model_name": self.model_name, "finish_reason": "stop"}
        if "refuse-if" in directives and directives["refuse-if"] in self.model_name:
            return AIMessage("I'm sorry, I can't help with that.", usage_metadata=usage,  # type: ignore[arg-type]
                             response_metadata=metadata)
        chosen = next((t["function"] for t in tools if t["function"]["name"] == directives.get("tool")), None)
        if chosen is not None:
            return AIMessage("", tool_calls=[{"name": chosen["name"], "args": _arguments(chosen, plain),
                                              "id": f"call-{len(self.calls)}"}],
                             usage_metadata=usage, response_metadata={**metadata, "finish_reason": "tool_calls"})  # type: ignore[arg-type]
        return AIMessage(f"[{self.model_name}] Answer to: {plain}", usage_metadata=usage,  # type: ignore[arg-type]
                         response_metadata=metadata)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if isinstance(self.hold, threading.Event):
            self.hold.wait(60)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs.get("tools") or ()))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if isinstance(self.hold, threading.Event):
            await asyncio.to_thread(self.hold.wait, 60)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs.get("tools") or ()))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield from _chunks(self._generate(messages, stop, run_manager, **kwargs).generations[0].message)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        result = await self._agenerate(messages, stop, run_manager, **kwargs)
        for chunk in _chunks(result.generations[0].message):
            yield chunk


def _arguments(function: dict[str, Any], text: str) -> dict[str, Any]:
    """Arguments for a tool call, from the question: its first number for integer parameters,
    its text for the others."""
    number = re.search(r"\d+", text)
    args: dict[str, Any] = {}
    for name, spec in (function.get("parameters") or {}).get("properties", {}).items():
        args[name] = int(number.group()) if spec.get("type") == "integer" and number else text
    return args


def _chunks(message: BaseMessage) -> Iterator[ChatGenerationChunk]:
    words = str(message.content).split(" ")
    for index, word in enumerate(words):
        yield ChatGenerationChunk(message=AIMessageChunk(content=word if index == len(words) - 1 else word + " "))
    assert isinstance(message, AIMessage)
    yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=message.usage_metadata,
                                                     response_metadata=message.response_metadata,
                                                     chunk_position="last"))


@tool
def track(query: str) -> str:
    """Track a parcel."""
    return "in transit"


@tool
def refund(query: str) -> str:
    """Refund an order."""
    return "refunded"
