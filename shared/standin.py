"""The stand-in provider: an OpenAI-compatible ``POST /v1/chat/completions`` (JSON and streamed
SSE), deterministic and offline. The demo runs on it, the tests and the examples call it live, and
the cassettes in ``cassettes/`` were recorded from it.

    python -m thrifty.standin [--port 0] [--host 127.0.0.1]

prints ``http://HOST:PORT/v1`` on its first line once it listens. In a program,
``async with StandIn(world) as url:`` serves it on a free port of the running event loop.
It needs ``aiohttp`` (a dependency of LiteLLM).

By default the answer is ``[<model>] Answer to: <last user message>``, so a caller can see which
model answered what, and usage counts one token per four characters (of the messages' contents and
the tool definitions). A :class:`World` given to
:class:`StandIn` takes over for the requests it knows: it says the answer, its token counts and
how long the model takes (the demo's world answers per ground-truth identity, and a cheap
model's answer to a hard task fails). Directives in the last user message change the behaviour:

* ``[refuse-if:<text>]``: answer "I'm sorry, I can't help with that." when the model name
  contains ``<text>`` (a cheap tier that fails validation);
* ``[status:<code>]``: fail with that HTTP status and an OpenAI-style error body;
* ``[delay:<seconds>]``: wait before answering (a slow provider);
* ``[hold:<name>]``: wait before answering until ``POST /release/<name>`` (at once if it came
  before): a test answers when it has seen what it waits for, not after a guessed delay;
* ``[cut:<n>]`` with ``stream``: break the connection after ``n`` chunks (no finish_reason, no ``[DONE]``);
* ``[tool:<name>]`` with a tool of that name in ``tools``: answer with a call of it (not streamed),
  its arguments ``{"query": <question>}``.

A request with ``response_format`` of type ``json_object`` or ``json_schema`` gets the answer as
``{"answer": "..."}``. A prompt that begins as an earlier one did is partly read from the
provider's prompt cache, as OpenAI's automatic prompt caching does
(:mod:`thrifty.standin_prompt_cache`; ``StandIn(prompt_cache=False)`` turns it off): its
``usage.prompt_tokens_details.cached_tokens`` says how many prompt tokens. ``GET /stats`` returns
``{"calls": n, "by_model": {...}, "max_in_flight": m, "held": {name: n}, "prompt_tokens": p,
"completion_tokens": c, "cached_tokens": r, "tokens_by_model": {...}}`` (the most requests it was
answering at once, the requests waiting for each release, the tokens it billed, in all and per
model);
``POST /stats/reset`` zeroes them. ``POST /v1/messages`` answers as Anthropic's Messages API, with
its explicit prompt caching (:mod:`thrifty.standin_anthropic`). The files and batches endpoints of
OpenAI's Batch API are :mod:`thrifty.standin_batches` (their counts in ``stats()["batch"]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .standin_anthropic import add_routes as add_anthropic_routes
from .standin_prompt_cache import PromptCache, prompt_text

_DIRECTIVE = re.compile(r"\[(refuse-if|status|delay|hold|cut|tool):([^\]]+)\]")
REFUSAL = "I'm sorry, I can't help with that."


@dataclass(frozen=True)
class Scripted:
    """What a :class:`World` says a model answers: the text, the usage it bills, and how long it
    takes (seconds, before the first byte)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency: float = 0.0


class World(Protocol):
    """The stand-in's knowledge: the answer a model gives to a request, or None to answer by
    default. Called on the server's event loop: must be quick and must not block."""

    def answer(self, body: Mapping[str, Any], model: str) -> Scripted | None: ...


def tokens(text: str) -> int:
    """The stand-in's token count of a text: one per four characters, at least one."""
    return max(1, len(text) // 4)


def prompt_tokens(messages: Any, tools: Any = None) -> int:
    """The stand-in's token count of a request's prompt: its messages' contents, joined, and its
    tool definitions (as JSON), which providers bill as input too."""
    listed = tools if isinstance(tools, list) and tools else None
    return tokens(prompt_text(messages) + (json.dumps(listed) if listed else ""))


def last_user_text(messages: Any) -> str:
    """The text of the last user message (text parts of a content list joined), or ""."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def answer_for(body: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The default answer text for a request, and the directives found in it."""
    text = last_user_text(body.get("messages") or [])
    directives = dict(_DIRECTIVE.findall(text))
    model = str(body.get("model", ""))
    plain = _DIRECTIVE.sub("", text).strip()
    refuse = directives.get("refuse-if")
    answer = REFUSAL if refuse and refuse in model else f"[{model}] Answer to: {plain}"
    return answer, directives


def as_json_if_asked(body: Mapping[str, Any], answer: str) -> str:
    """``{"answer": ...}`` when the request asks for JSON output, else the answer unchanged."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return json.dumps({"answer": answer})
    return answer


def text_and_usage(body: Mapping[str, Any], answer: str, scripted: Scripted | None) -> tuple[str, dict[str, Any]]:
    """The answer's text and its usage: the world's scripted answer when it has one, else the
    stand-in's own (as JSON when the request asks for JSON), counted one token per four characters."""
    if scripted is not None:
        text = scripted.text
        usage: dict[str, Any] = {"prompt_tokens": scripted.prompt_tokens,
                                 "completion_tokens": scripted.completion_tokens}
    else:
        text = as_json_if_asked(body, answer)
        usage = {"prompt_tokens": prompt_tokens(body.get("messages"), body.get("tools")),
                 "completion_tokens": tokens(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return text, usage


def reply_message(body: Mapping[str, Any], text: str, directives: Mapping[str, str],
                  call_id: str) -> tuple[dict[str, Any], str]:
    """The assistant message and its finish reason: a call of the tool that ``[tool:name]`` names,
    when the request offers that tool (its argument the user's words), else ``text``."""
    tool = directives.get("tool")
    if tool and any((t.get("function") or {}).get("name") == tool for t in body.get("tools") or []):
        plain = _DIRECTIVE.sub("", last_user_text(body.get("messages") or [])).strip()
        call = {"id": call_id, "type": "function",
                "function": {"name": tool, "arguments": json.dumps({"query": plain})}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {"role": "assistant", "content": text}, "stop"


class StandIn:
    """One stand-in provider: its counters, its held requests and, optionally, its :class:`World`."""

    def __init__(self, world: World | None = None, *, prompt_cache: bool = True) -> None:
        self.world = world
        self.prompt_cache = PromptCache() if prompt_cache else None
        self.calls: Counter[str] = Counter()
        self.billed: dict[str, Counter[str]] = {}  # model -> prompt_tokens, completion_tokens
        self.in_flight = 0
        self.max_in_flight = 0
        self.held: Counter[str] = Counter()
        self._releases: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None
        from .standin_batches import BatchDesk

        self.batch_desk = BatchDesk(self)  # files and batches: thrifty.standin_batches

    # ------------------------------------------------------------------ serving
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/chat/completions", self._chat_completions)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        app.router.add_post("/release/{name}", self._release_route)
        self.batch_desk.add_routes(app)
        add_anthropic_routes(app, self)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on the running event loop; returns ``http://HOST:PORT/v1``."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{host}:{bound}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ counters
    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls.total(), "by_model": dict(self.calls), "max_in_flight": self.max_in_flight,
                "held": {name: n for name, n in self.held.items() if n},
                "prompt_tokens": sum(c["prompt_tokens"] for c in self.billed.values()),
                "completion_tokens": sum(c["completion_tokens"] for c in self.billed.values()),
                "cached_tokens": sum(c["cached_tokens"] for c in self.billed.values()),
                "tokens_by_model": {model: dict(c) for model, c in self.billed.items()},
                "batch": self.batch_desk.stats()}

    def reset(self) -> None:
        self.calls.clear()
        self.billed.clear()
        self.max_in_flight = self.in_flight
        self.batch_desk.reset()

    def release(self, name: str) -> None:
        self._releases.setdefault(name, asyncio.Event()).set()

    # ------------------------------------------------------------------ routes
    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"calls": 0})

    async def _release_route(self, request: web.Request) -> web.Response:
        self.release(request.match_info["name"])
        return web.json_response({"released": request.match_info["name"]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}},
                                     status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "the body must be a JSON object",
                                                "type": "invalid_request_error"}}, status=400)
        model = str(body.get("model", ""))
        self.calls[model] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body, model)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        answer, directives = answer_for(body)
        scripted = self.world.answer(body, model) if self.world is not None else None
        if "hold" in directives:
            name = directives["hold"]
            self.held[name] += 1
            try:
                await self._releases.setdefault(name, asyncio.Event()).wait()
            finally:
                self.held[name] -= 1
        if "delay" in directives:
            await asyncio.sleep(float(directives["delay"]))
        if scripted is not None and scripted.latency > 0:
            await asyncio.sleep(scripted.latency)  # the model's own time to answer, not ordering
        if "status" in directives:
            status = int(directives["status"])
            return web.json_response({"error": {"message": f"stand-in failure {status}", "type": "server_error",
                                                 "code": str(status)}}, status=status)
        answer, usage = text_and_usage(body, answer, scripted)
        cached = self.prompt_cache.read(body, model, usage["prompt_tokens"]) if self.prompt_cache else 0
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        self.billed.setdefault(model, Counter()).update(
            {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
             "cached_tokens": cached})
        ident = f"chatcmpl-standin{self.calls.total()}"
        created = int(time.time())
        if not body.get("stream"):
            message, finish = reply_message(body, answer, directives, f"call_standin{self.calls.total()}")
            return web.json_response({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage, "system_fingerprint": "fp_standin"})
        return await self._stream(request, body, model, answer, usage, ident, created, directives)

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str, answer: str,
                      usage: dict[str, Any], ident: str, created: int,
                      directives: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        words = re.findall(r"\S+\s*", answer) or [answer]
        cut = int(directives["cut"]) if "cut" in directives else None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                       "system_fingerprint": "fp_standin",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(payload)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": ""}))
        for index, word in enumerate(words):
            if cut is not None and index >= cut:
                # the connection breaks, as when a provider or the network fails mid-answer
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(chunk({"content": word}))
        await response.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


async def serve(host: str, port: int) -> None:
    url = await StandIn().start(host, port)
    print(url, flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m thrifty.standin",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
