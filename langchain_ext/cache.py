"""``set_llm_cache(ThriftyCache())``: thrifty's semantic cache as LangChain's cache.

LangChain asks its cache before every chat model call that does not stream
(``BaseChatModel._generate_with_cache`` / ``_agenerate_with_cache`` in
``langchain_core/language_models/chat_models.py``) with a ``prompt`` (``dumps`` of the messages)
and an ``llm_string`` (the model's serialised constructor, ``---``, the call's keywords), and
hands it the answer afterwards. :class:`ThriftyCache` reads both back into an OpenAI-format
request (:func:`langchain_ext.translate.cache_request`), so the same scope rules hold as through
LiteLLM - model and every setting that changes the answer, bound tools, system prompt, earlier
turns, tenant - and answers are reused by meaning where the verifier allows, exactly otherwise.

What LangChain's cache hook cannot do, and :class:`~langchain_ext.CostRouter` does: LangChain does
not consult its cache for ``stream`` / ``astream``, and it tells the cache nothing when a call
fails, so a cache cannot join concurrent identical calls or hold a budget reservation (either
would wait for an ending that never comes). The cache reuses and stores answers; swap the model
for a ``CostRouter`` for single-flight, routing and budgets.

A wrong answer: ``cache.report_wrong(prompt, llm_string)`` (LangChain's cache key of the call
that got it) never serves it that answer again (:meth:`thrifty.Thrifty.report_wrong`). No shadow
audits here: the cache has no way to call the model itself (LangChain makes the call), so
``cache.audit_rate`` does nothing for it; a ``CostRouter`` is audited.

thrifty fails open here too: a lookup or a store that meets an error in thrifty's own parts is a
miss or a no-op, logged once per kind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.outputs import ChatGeneration
from thrifty import Completion, Reported, Reused, Thrifty, ThriftySettings
from thrifty.log_once import LogOnce

from .gate import gate_for
from .translate import cache_request, completion_of_generations, current_metadata, message_of, owners_of

log = logging.getLogger("thrifty.langchain")


class ThriftyCache(BaseCache):
    """LangChain's ``BaseCache`` backed by thrifty's semantic cache.

    Args:
        settings: a :class:`~thrifty.ThriftySettings`, or the path of a YAML file with a
            ``thrifty:`` section; default: the environment and the defaults (the embedded store
            under ``~/.cache/thrifty/``), shared with the other parts of the adapter.
        gate: an existing :class:`~thrifty.Thrifty` to use (settings are then ignored).
        **overrides: settings fields, e.g. ``cache={"ttl_seconds": 600}``.
    """

    def __init__(self, settings: ThriftySettings | str | Path | None = None, *, gate: Thrifty | None = None,
                 **overrides: Any) -> None:
        self.gate = gate_for(settings, gate=gate, **overrides)
        self._warn_once = LogOnce(log)

    # ------------------------------------------------------------------ BaseCache
    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The stored answer to this prompt under this model's settings, or None."""
        try:
            return self._generations(self.gate.lookup(cache_request(prompt, llm_string, self._metadata())))
        except Exception as exc:  # noqa: BLE001 - fail open: a miss
            self._warn("lookup", exc)
            return None

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async twin of :meth:`lookup`; never blocks the event loop."""
        try:
            return self._generations(await self.gate.alookup(cache_request(prompt, llm_string, self._metadata())))
        except Exception as exc:  # noqa: BLE001 - fail open: a miss
            self._warn("lookup", exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Keep the model's answer (a single chat answer; several generations are not stored)."""
        try:
            storable = self._storable(prompt, llm_string, return_val)
            if storable is not None:
                self.gate.store(*storable)
        except Exception as exc:  # noqa: BLE001 - fail open: nothing stored
            self._warn("update", exc)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async twin of :meth:`update`."""
        try:
            storable = self._storable(prompt, llm_string, return_val)
            if storable is not None:
                await self.gate.astore(*storable)
        except Exception as exc:  # noqa: BLE001 - fail open: nothing stored
            self._warn("update", exc)

    # ------------------------------------------------------------------ wrong-answer reports
    def report_wrong(self, prompt: str, llm_string: str) -> Reported:
        """The answer LangChain's cache key (``prompt``, ``llm_string``) was served is wrong for
        it: never serve it again (the pairing blocked, or the entry evicted). The tenant and the
        other owners come from the current run's metadata, as for a lookup. Never raises."""
        try:
            request = cache_request(prompt, llm_string, self._metadata())
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        return self.gate.report_wrong(request)

    async def areport_wrong(self, prompt: str, llm_string: str) -> Reported:
        """Async twin of :meth:`report_wrong`."""
        try:
            request = cache_request(prompt, llm_string, self._metadata())
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        return await self.gate.areport_wrong(request)

    def clear(self, **kwargs: Any) -> None:
        """Remove every stored answer."""
        self.gate.cache.clear()

    async def aclear(self, **kwargs: Any) -> None:
        """Async twin of :meth:`clear` (the store's clear is one quick operation)."""
        self.gate.cache.clear()

    # ------------------------------------------------------------------ translation
    def _storable(self, prompt: str, llm_string: str,
                  return_val: RETURN_VAL_TYPE) -> tuple[dict[str, Any], Completion] | None:
        request = cache_request(prompt, llm_string, self._metadata())
        completion = completion_of_generations(return_val, model=request["model"])
        return None if completion is None else (request, completion)

    @staticmethod
    def _metadata() -> dict[str, Any]:
        return owners_of(current_metadata())

    @staticmethod
    def _generations(reused: Reused | None) -> list[ChatGeneration] | None:
        if reused is None:
            return None
        decision: dict[str, Any] = {"decision": "cache_hit", "source": reused.source,
                                    "saved_cost": reused.saved_cost}
        if reused.similarity is not None:
            decision["similarity"] = round(reused.similarity, 4)
        return [ChatGeneration(message=message_of(reused.answer, decision, reused=True))]

    def _warn(self, where: str, exc: BaseException) -> None:
        self._warn_once(f"{where}:{type(exc).__name__}",
                        "thrifty let a LangChain call through its cache untouched after an error in %s: %r",
                        where, exc)
