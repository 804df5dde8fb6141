"""The stand-in provider's Anthropic Messages endpoint (``POST /v1/messages``, whole answers),
with Anthropic's explicit prompt caching: a ``cache_control`` mark on a tool, a system block or a
message block closes a cacheable prefix (tools, then system, then messages, in order). The first
request with a prefix of at least 1,024 tokens writes it (``usage.cache_creation_input_tokens``);
a later request beginning with the same prefix reads it (``usage.cache_read_input_tokens``);
``input_tokens`` counts the rest, as Anthropic bills them. Tokens are counted as the stand-in
counts them (:func:`thrifty.standin.tokens` of the texts), and the answer is the stand-in's default
one, so LiteLLM's Anthropic transformation and thrifty's accounting of cache reads and writes can
be tested through real LiteLLM without Anthropic.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .standin_prompt_cache import CHARS_PER_TOKEN, MIN_CACHED_TOKENS

if TYPE_CHECKING:
    from .standin import StandIn


@dataclass(frozen=True)
class AnthropicUsage:
    """What one request is billed, Anthropic's way: ``input_tokens`` excludes the cache's."""

    input_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


def blocks(body: Mapping[str, Any]) -> Iterator[tuple[str, bool]]:
    """The request's prompt as (text, marked) pieces in Anthropic's cache order: tools, system,
    messages; ``marked`` when the piece carries ``cache_control``."""
    for tool in body.get("tools") or []:
        if isinstance(tool, Mapping):
            yield json.dumps({k: v for k, v in tool.items() if k != "cache_control"}, sort_keys=True), \
                "cache_control" in tool
    system = body.get("system")
    if isinstance(system, (str, list)):
        yield from _content_blocks({"content": system})
    for message in body.get("messages") or []:
        if isinstance(message, Mapping):
            yield from _content_blocks(message)


def _content_blocks(message: Mapping[str, Any]) -> Iterator[tuple[str, bool]]:
    content = message.get("content")
    if isinstance(content, str):
        yield content, False
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping):
                text = block.get("text")
                yield (text if isinstance(text, str) else json.dumps(block, sort_keys=True, default=str)), \
                    "cache_control" in block


class AnthropicPromptCache:
    """The prefixes a stand-in has cached, per model. Used from the stand-in's event loop only."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def bill(self, body: Mapping[str, Any], model: str) -> AnthropicUsage:
        """What the request is billed, and remember the prefixes it marked."""
        digest = hashlib.blake2b(model.encode(), digest_size=16).digest()
        chars = 0
        marks: list[tuple[bytes, int]] = []
        for text, marked in blocks(body):
            digest = hashlib.blake2b(digest + text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            chars += len(text)
            if marked:
                marks.append((digest, chars // CHARS_PER_TOKEN))
        total = max(1, chars // CHARS_PER_TOKEN)
        cacheable = [(d, n) for d, n in marks if n >= MIN_CACHED_TOKENS]
        read = max((n for d, n in cacheable if d in self._seen), default=0)
        longest = max((n for _, n in cacheable), default=0)
        written = longest - read if longest > read else 0
        self._seen.update(d for d, _ in cacheable)
        return AnthropicUsage(total - read - written, read, written)


def add_routes(app: web.Application, standin: StandIn) -> None:
    """Serve ``POST /v1/messages`` for ``standin``, billed in its counters (cache reads as
    ``cached_tokens``, cache writes as ``cache_write_tokens``, both among ``prompt_tokens``)."""
    from .standin import answer_for, tokens

    cache = AnthropicPromptCache()

    async def messages(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("stream"):
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "a JSON object, not streamed, is what the stand-in "
                "answers on /v1/messages"}}, status=400)
        model = str(body.get("model", ""))
        standin.calls[model] += 1
        answer, _ = answer_for(body)
        if standin.prompt_cache is not None:
            usage = cache.bill(body, model)
        else:
            usage = AnthropicUsage(max(1, sum(len(t) for t, _ in blocks(body)) // CHARS_PER_TOKEN), 0, 0)
        output = tokens(answer)
        standin.billed.setdefault(model, Counter()).update(
            {"prompt_tokens": usage.prompt_tokens, "completion_tokens": output,
             "cached_tokens": usage.cache_read_input_tokens, "cache_write_tokens": usage.cache_creation_input_tokens})
        return web.json_response({
            "id": f"msg_standin{standin.calls.total()}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": output,
                      "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                      "cache_read_input_tokens": usage.cache_read_input_tokens}})

    app.router.add_post("/v1/messages", messages)
