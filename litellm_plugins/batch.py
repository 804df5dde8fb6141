"""The batch lane through LiteLLM: work that can wait, at the provider's batch price.

    import litellm_plugins

    litellm_plugins.install()                                  # the gate: cache, budgets, ledger
    lane = litellm_plugins.BatchLane(api_base=..., api_key=...)  # custom_llm_provider="openai"
    async with lane:                                           # resumes what a crash left
        future = await lane.defer(model="gpt-4o-mini", messages=[...], metadata={"tenant": "acme"})
        response = await future                                # a litellm.ModelResponse
        response = await lane.acompletion(model=..., messages=[...])  # defer and wait, in one

Requests go out through LiteLLM's files and batches functions (``acreate_file``,
``acreate_batch``, ``aretrieve_batch``, ``alist_batches``, ``afile_content``) to the lane's
provider; everything else - the cache and identical calls in flight first, the batch price, the
durable queue, flushing by count and age, resuming after a crash - is the core's
(:mod:`thrifty.batch_lane`). The answer of each request is stored in thrifty's cache, so the same
question asked later through ``litellm.acompletion`` is a cache hit.

Why ``metadata={"thrifty": {"defer": "24h"}}`` on ``litellm.acompletion`` is not honoured: LiteLLM
has no hook that can answer a call later. The only way to hand back an answer without a call is
its cache path, which would keep the caller's ``acompletion`` awaiting for hours under LiteLLM's
request timeout and retries, and would mark the batch's answer a cache hit priced at $0 in
LiteLLM's own spend tracking and callbacks. A deferred request is an explicit call of this lane:
``lane.defer(**kwargs)`` takes the same keyword arguments as ``acompletion``
(``lane.acompletion`` too), and honours that metadata by ignoring it.

Credentials are the lane's (``api_key``, ``api_base``, any other LiteLLM keyword), never the
request's: the queue stores no ``api_key``, ``api_base``, header or secret reference, so a request
resumed after a restart is sent with the credentials of the lane that resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import litellm
from thrifty import BudgetExceeded, Completion, Thrifty
from thrifty.batch_lane import (
    BatchLane as CoreLane,
)
from thrifty.batch_lane import (
    BatchLine,
    BatchLineFailed,
    Deferred,
    Delivered,
    LineResult,
    ProviderBatch,
    Stage,
)
from thrifty.batch_queue import BatchQueue
from thrifty.request import OUTPUT_PARAMS
from thrifty.settings import BatchSettings

from .errors import BudgetExceededError
from .translate import THRIFTY, completion_of, response_dict, thrifty_request

__all__ = ["BatchLane", "BatchLineFailed", "Deferred", "LiteLLMBatchProvider"]

TAG = "thrifty_batch"  # the provider batch's metadata key naming the lane's local batch id
# What of a request goes into a batch line's body: the chat fields OpenAI's batch API takes.
_BODY = frozenset({"model", "messages", "user", *OUTPUT_PARAMS}) - {"extra_body", "thinking", "top_k", "min_p",
                                                                    "repetition_penalty", "max_output_tokens"}


class LiteLLMBatchProvider:
    """:class:`thrifty.batch_lane.BatchProvider` through LiteLLM's files and batches functions,
    against ``custom_llm_provider`` (``openai`` and OpenAI-compatible providers; ``api_base``
    points it at any). ``**litellm_kwargs`` go to every call (``api_key``, ``organization``, ...);
    an ``os.environ/NAME`` value is read from the environment when the call is made."""

    def __init__(self, *, custom_llm_provider: str = "openai", **litellm_kwargs: Any) -> None:
        self.custom_llm_provider = custom_llm_provider
        self._kwargs = litellm_kwargs

    def _creds(self) -> dict[str, Any]:
        resolved = {k: os.environ.get(v.removeprefix("os.environ/"), "") if isinstance(v, str)
                    and v.startswith("os.environ/") else v for k, v in self._kwargs.items()}
        return {"custom_llm_provider": self.custom_llm_provider, **resolved}

    def body(self, line: BatchLine) -> dict[str, Any]:
        """The line's request as the provider's chat endpoint takes it: the OpenAI chat fields,
        on the model without LiteLLM's provider prefix."""
        body = {k: v for k, v in line.request.items() if k in _BODY and v is not None}
        model = str(line.model or line.request.get("model") or "")
        with contextlib.suppress(Exception):  # a name LiteLLM cannot place is sent as given
            model = str(litellm.get_llm_provider(model=model)[0])
        body["model"] = model
        return body

    async def upload(self, lines: Sequence[BatchLine]) -> str:
        data = "".join(json.dumps({"custom_id": line.custom_id, "method": "POST", "url": "/v1/chat/completions",
                                   "body": self.body(line)}, ensure_ascii=False) + "\n" for line in lines)
        created = await litellm.acreate_file(file=("thrifty-batch.jsonl", data.encode()), purpose="batch",
                                             **self._creds())
        return str(created.id)

    async def create(self, file_id: str, *, tag: str, completion_window: str) -> str:
        batch = await litellm.acreate_batch(completion_window=completion_window,  # type: ignore[arg-type]
                                            endpoint="/v1/chat/completions", input_file_id=file_id,
                                            metadata={TAG: tag}, **self._creds())
        return str(batch.id)

    async def find(self, tag: str) -> str | None:
        page = await litellm.alist_batches(limit=100, **self._creds())
        for batch in getattr(page, "data", None) or []:
            if (getattr(batch, "metadata", None) or {}).get(TAG) == tag:
                return str(batch.id)
        return None

    async def retrieve(self, batch_id: str) -> ProviderBatch:
        batch = await litellm.aretrieve_batch(batch_id=batch_id, **self._creds())
        return ProviderBatch(str(batch.id), str(batch.status), batch.output_file_id, batch.error_file_id)

    async def results(self, file_id: str) -> list[LineResult]:
        content = await litellm.afile_content(file_id=file_id, **self._creds())
        raw = getattr(content, "content", content)
        text = raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
        results = []
        for line in text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            response = item.get("response") or {}
            error = item.get("error")
            results.append(LineResult(str(item.get("custom_id")), int(response.get("status_code") or 500),
                                      response.get("body"), json.dumps(error) if error else None))
        return results

    def completion(self, body: Mapping[str, Any]) -> Completion:
        return completion_of(body)


class BatchLane:
    """The batch lane for LiteLLM users (see the module docstring).

    Args:
        gate: the gate to use; default that of the installed :class:`ThriftyCallback`
            (:func:`litellm_plugins.install`), else one of its own from ``settings``.
        settings: the ``batch:`` settings; default the gate's.
        custom_llm_provider: LiteLLM's provider of the batch API (``openai`` by default).
        queue: the durable queue; default the file at ``batch.path``.
        on_stage: awaited at each stage of :data:`thrifty.batch_lane.STAGES` (tests).
        **litellm_kwargs: given to every LiteLLM files and batches call: ``api_key``,
            ``api_base``, ``organization``, ...
    """

    def __init__(self, *, gate: Thrifty | None = None, settings: BatchSettings | None = None,
                 custom_llm_provider: str = "openai", queue: BatchQueue | str | Path | None = None,
                 on_stage: Stage | None = None, **litellm_kwargs: Any) -> None:
        if gate is None:
            from . import installed

            callback = installed()
            gate = callback.gate if callback is not None else Thrifty()
        self.provider = LiteLLMBatchProvider(custom_llm_provider=custom_llm_provider, **litellm_kwargs)
        self.lane = CoreLane(gate, self.provider, settings, queue=queue, on_stage=on_stage)

    @property
    def gate(self) -> Thrifty:
        return self.lane.gate

    async def defer(self, **kwargs: Any) -> Deferred:
        """Defer a chat call: ``kwargs`` as for ``litellm.acompletion`` (``model``, ``messages``,
        ``metadata`` with the tenant, ...; ``api_key`` / ``api_base`` are ignored: the lane's are
        used). Returns at once a future of the ``litellm.ModelResponse``, whose ``request_id``
        names it for :meth:`result`. Raises :class:`~litellm_plugins.BudgetExceededError` when a
        budget refuses it even at the batch price."""
        request = thrifty_request(kwargs)
        try:
            inner = await self.lane.defer(request)
        except BudgetExceeded as refused:
            raise BudgetExceededError(refused) from None
        outer = Deferred(inner.request_id)

        def relay(done: Any) -> None:
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
            elif (error := done.exception()) is not None:
                outer.set_exception(error)
            else:
                outer.set_result(model_response(done.result()))

        inner.add_done_callback(relay)
        return outer

    async def acompletion(self, **kwargs: Any) -> litellm.ModelResponse:
        """:meth:`defer`, then wait for the answer (hours, with a real provider's batch)."""
        return await (await self.defer(**kwargs))

    async def result(self, request_id: str) -> litellm.ModelResponse:
        """The answer of a deferred request by its id - from this process or one before it -
        waiting for it if it is not delivered yet. Raises ``KeyError`` for an unknown id,
        :class:`BatchLineFailed` for a request that failed."""
        return model_response(await self.lane.result(request_id))

    async def flush(self) -> int:
        """Send every queued request now; how many were sent."""
        return await self.lane.flush()

    async def poll(self) -> int:
        """Look at the batches in progress once and deliver what arrived; how many were delivered."""
        return await self.lane.poll()

    async def resume(self) -> int:
        """Pick up what an earlier process left in the queue; how many requests."""
        return await self.lane.resume()

    async def start(self) -> None:
        """:meth:`resume`, then flush by count and age and poll, in the background."""
        await self.lane.start()

    async def stop(self) -> None:
        await self.lane.stop()

    def pending(self) -> dict[str, int]:
        """How many requests are in each state of the queue."""
        return self.lane.pending()

    def close(self) -> None:
        self.lane.close()

    async def __aenter__(self) -> BatchLane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def model_response(delivered: Delivered) -> litellm.ModelResponse:
    """A delivered answer as the ``litellm.ModelResponse`` ``acompletion`` would have returned,
    with ``_hidden_params["thrifty"]`` saying how it was answered."""
    response = litellm.ModelResponse(**response_dict(delivered.answer))
    decision = {"batch": "batch", "lane_joined": "batch_joined", "joined": "joined"}.get(delivered.source,
                                                                                         "cache_hit")
    response._hidden_params[THRIFTY] = {"decision": decision, "source": delivered.source,
                                        "request_id": delivered.request_id}
    return response
