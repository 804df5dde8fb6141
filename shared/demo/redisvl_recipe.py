"""The common recipe's semantic cache, for real: RedisVL's ``SemanticCache`` as ``litellm.cache``.

As in RedisVL's and LiteLLM's guides: the prompt is the last user message, embedded (here with
thrifty's all-MiniLM-L6-v2, so only the cache's decision differs from thrifty's), and the nearest
stored prompt within the distance threshold (cosine similarity 0.92 = distance 0.08) answers,
for the same model. Nothing else is compared: not the system prompt, not earlier turns, not the
user. The demo's baseline, never part of thrifty.
"""

from __future__ import annotations

import json
from typing import Any

from litellm.caching.caching import Cache

from ..embedder import Embedder
from ..standin import last_user_text


def _last_user_text(kwargs: dict[str, Any]) -> str | None:
    return last_user_text(kwargs.get("messages")) or None


class RedisVLRecipeCache(Cache):  # type: ignore[misc]
    """``litellm.cache`` backed by RedisVL's SemanticCache (LiteLLM calls ``async_get_cache`` before
    a call and ``async_add_cache`` after it: ``litellm/caching/caching_handler.py``)."""

    def __init__(self, redis_url: str, name: str, embedder: Embedder, similarity: float) -> None:
        from redisvl.extensions.cache.llm import SemanticCache

        try:
            from redisvl.utils.vectorize import CustomVectorizer
        except ImportError:  # redisvl before 0.5 names it CustomTextVectorizer
            from redisvl.utils.vectorize import CustomTextVectorizer as CustomVectorizer

        super().__init__(max_messages=None, supported_call_types=["acompletion", "completion"])

        def embed(text: str) -> list[float]:
            vector = embedder.embed([text])[0]
            return [0.0] * embedder.dim if vector is None else [float(x) for x in vector]

        self.llmcache = SemanticCache(name=name, redis_url=redis_url, distance_threshold=1 - similarity,
                                      vectorizer=CustomVectorizer(embed),
                                      filterable_fields=[{"name": "model", "type": "tag"}])

    def _model_filter(self, kwargs: dict[str, Any]) -> Any:
        from redisvl.query.filter import Tag

        return Tag("model") == str(kwargs.get("model"))

    async def async_get_cache(self, dynamic_cache_object: Any = None, **kwargs: Any) -> Any:
        prompt = _last_user_text(kwargs)
        if prompt is None:
            return None
        hits = await self.llmcache.acheck(prompt=prompt, filter_expression=self._model_filter(kwargs))
        return json.loads(hits[0]["response"]) if hits else None

    async def async_add_cache(self, result: Any, dynamic_cache_object: Any = None, **kwargs: Any) -> None:
        prompt = _last_user_text(kwargs)
        # LiteLLM hands over the response serialised to JSON, or the ModelResponse itself
        response = result if isinstance(result, str) else getattr(result, "model_dump_json", lambda: None)()
        if prompt is None or not response:
            return
        await self.llmcache.astore(prompt=prompt, response=response, filters={"model": str(kwargs.get("model"))})

    def delete(self) -> None:
        """Drop the index and every entry."""
        self.llmcache.delete()
