"""An OpenAI-compatible stand-in for a model provider: ``POST /v1/chat/completions``, JSON and
streaming (SSE), instant and deterministic. The cassettes in ``cassettes/`` were recorded from it;
the proxy tests, the examples and the proxy benchmark run against it live.

    python tests/standin_server.py [--port 0] [--host 127.0.0.1]

prints ``http://HOST:PORT/v1`` on its first line once it listens.

The answer is ``[<model>] Answer to: <last user message>``, so a test can see which model
answered what. Directives in the last user message change the behaviour:

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
``{"answer": "..."}``. Usage counts are one token per four characters, at least one.
``GET /stats`` returns ``{"calls": n, "by_model": {...}, "max_in_flight": m, "held": {name: n}}``
(the most requests it was answering at once, and the requests waiting for each release);
``POST /stats/reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import web

_DIRECTIVE = re.compile(r"\[(refuse-if|status|delay|hold|cut|tool):([^\]]+)\]")
CALLS: Counter[str] = Counter()
FLIGHT = {"now": 0, "max": 0}  # requests being answered at once, and the most there were
RELEASES: dict[str, asyncio.Event] = {}
HELD: Counter[str] = Counter()


def _release(name: str) -> asyncio.Event:
    return RELEASES.setdefault(name, asyncio.Event())


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def answer_for(body: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The answer text for a request, and the directives found in it."""
    text = _last_user_text(body.get("messages") or [])
    directives = dict(_DIRECTIVE.findall(text))
    model = str(body.get("model", ""))
    plain = _DIRECTIVE.sub("", text).strip()
    refuse = directives.get("refuse-if")
    answer = "I'm sorry, I can't help with that." if refuse and refuse in model else f"[{model}] Answer to: {plain}"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        answer = json.dumps({"answer": answer})
    return answer, directives


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}},
                                 status=400)
    model = str(body.get("model", ""))
    CALLS[model] += 1
    FLIGHT["now"] += 1
    FLIGHT["max"] = max(FLIGHT["max"], FLIGHT["now"])
    try:
        return await _answer(request, body, model)
    finally:
        FLIGHT["now"] -= 1


async def _answer(request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
    answer, directives = answer_for(body)
    if "hold" in directives:
        HELD[directives["hold"]] += 1
        try:
            await _release(directives["hold"]).wait()
        finally:
            HELD[directives["hold"]] -= 1
    if "delay" in directives:
        await asyncio.sleep(float(directives["delay"]))
    if "status" in directives:
        status = int(directives["status"])
        return web.json_response({"error": {"message": f"stand-in failure {status}", "type": "server_error",
                                             "code": str(status)}}, status=status)
    prompt_text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
    usage = {"prompt_tokens": _tokens(prompt_text), "completion_tokens": _tokens(answer)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    ident = f"chatcmpl-standin{CALLS.total()}"
    created = int(time.time())
    tool = directives.get("tool")
    if tool and not body.get("stream") and any((t.get("function") or {}).get("name") == tool
                                                for t in body.get("tools") or []):
        plain = _DIRECTIVE.sub("", _last_user_text(body.get("messages") or [])).strip()
        call = {"id": f"call_standin{CALLS.total()}", "type": "function",
                "function": {"name": tool, "arguments": json.dumps({"query": plain})}}
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                         "finish_reason": "tool_calls", "logprobs": None}],
            "usage": usage, "system_fingerprint": "fp_standin"})
    if not body.get("stream"):
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage, "system_fingerprint": "fp_standin"})
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


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"calls": CALLS.total(), "by_model": dict(CALLS), "max_in_flight": FLIGHT["max"],
                              "held": {name: n for name, n in HELD.items() if n}})


async def release(request: web.Request) -> web.Response:
    _release(request.match_info["name"]).set()
    return web.json_response({"released": request.match_info["name"]})


async def reset(request: web.Request) -> web.Response:
    CALLS.clear()
    FLIGHT["max"] = FLIGHT["now"]
    return web.json_response({"calls": 0})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset)
    app.router.add_post("/release/{name}", release)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://{host}:{bound}/v1", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
