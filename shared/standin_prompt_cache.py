"""The stand-in provider's prompt cache, as OpenAI documents its automatic prompt caching: a
request whose prompt begins with the same 1,024 tokens or more as an earlier request to the same
model, with the same tools, has that prefix read from the cache, counted in steps of 128 tokens,
and billed at the model's cached-input price (``usage.prompt_tokens_details.cached_tokens``).

The prefix is the request's tools and its messages' contents in order, counted as the stand-in
counts tokens (one per four characters, :func:`thrifty.standin.tokens`); one changed byte early in
the prompt (a timestamp in a system prompt, reordered tools) leaves nothing to read. What the
provider keeps is bounded (``max_blocks``, oldest forgotten first); it never expires otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4
BLOCK_TOKENS = 128
MIN_CACHED_TOKENS = 1024


def prompt_text(messages: Any) -> str:
    """The text the stand-in counts a prompt's tokens from: the messages' contents, joined."""
    listed = messages if isinstance(messages, list) else []
    return " ".join(str(m.get("content") or "") for m in listed if isinstance(m, dict))


class PromptCache:
    """Which prompt prefixes a stand-in has seen, per model and tool list. Not thread-safe: the
    stand-in calls it from its event loop only."""

    def __init__(self, max_blocks: int = 200_000) -> None:
        self.max_blocks = max_blocks
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def read(self, body: Mapping[str, Any], model: str, prompt_tokens: int) -> int:
        """How many of the request's ``prompt_tokens`` are read from the cache; then remember its
        prefix for the requests after it."""
        chain = self._chain(body, model)
        cached_blocks = 0
        for digest in chain:
            if digest not in self._seen:
                break
            self._seen.move_to_end(digest)
            cached_blocks += 1
        for digest in chain[cached_blocks:]:
            self._seen[digest] = None
        while len(self._seen) > self.max_blocks:
            self._seen.popitem(last=False)
        cached = min(cached_blocks * BLOCK_TOKENS, prompt_tokens)
        return cached - cached % BLOCK_TOKENS if cached >= MIN_CACHED_TOKENS else 0

    @staticmethod
    def _chain(body: Mapping[str, Any], model: str) -> list[bytes]:
        """One digest per whole block of the prompt, each covering every block before it."""
        seed = json.dumps([model, body.get("tools") or []], sort_keys=True, default=str).encode()
        digest = hashlib.blake2b(seed, digest_size=16).digest()
        text = prompt_text(body.get("messages")).encode("utf-8", "surrogatepass")
        block = BLOCK_TOKENS * CHARS_PER_TOKEN
        chain = []
        for start in range(0, len(text) - block + 1, block):
            digest = hashlib.blake2b(digest + text[start:start + block], digest_size=16).digest()
            chain.append(digest)
        return chain
