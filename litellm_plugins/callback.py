"""thrifty inside LiteLLM: a cache backend and a callback that put :class:`thrifty.Thrifty` (the
gate: cache, single-flight, router, budgets, ledger) in front of every ``litellm.completion`` /
``acompletion``, including the calls LiteLLM's Router and proxy make.

LiteLLM has no hook that both sees a call before it is made and can answer it, so the adapter uses
two of its extension points, matched by the call's ``litellm_call_id``:

* :class:`ThriftyCache`, set as ``litellm.cache``: LiteLLM asks it for a cached answer before
  every call (``litellm/caching/caching_handler.py``, ``async_get_cache`` / ``sync_get_cache``)
  and turns a returned chat.completion dict into a ``ModelResponse``, or a stream of chunks when
  the caller asked for ``stream=True``, marked as a cache hit. A reused answer (a hit, or the answer
  of an identical call in flight) comes back that way, without reaching the provider.
* :class:`ThriftyCallback`, a ``CustomLogger`` in ``litellm.callbacks``:
  ``async_pre_call_deployment_hook`` (awaited before the cache lookup, ``litellm/utils.py``) makes
  the decision for async calls and can change the model (routing); the deployment success and
  failure hooks, the cache writes LiteLLM makes when a call or a stream ends, and the success and
  failure events finish the decision: the answer goes to the cache and to the waiting callers,
  the budget is settled, or the reservation released.

Where a decision is made: in the Router strategy (:mod:`litellm_plugins.routing`) or the proxy's
pre-call hook (:mod:`litellm_plugins.proxy`) when there is one, else in the deployment hook (async
calls), else in the cache lookup (sync calls). Everything thrifty decides is in the response's
``_hidden_params["thrifty"]``.

Which hook finishes a call (ends its ticket): the first of these to see it; the decision is then
forgotten, and the later hooks find nothing to do.

* async call, whole answer: ``async_post_call_success_deployment_hook``, before the caller gets
  the answer (so an answer that fails validation can be replaced by a re-call on the next tier);
* async stream: ``async_add_cache``, which LiteLLM calls with the assembled answer when the stream
  ends (``litellm_core_utils/streaming_handler.py`` -> ``caching_handler.py``,
  ``add_streaming_response_to_cache``, in a background write task), else
  ``async_log_success_event``;
* sync call or stream: ``add_cache``, else ``log_success_event`` (LiteLLM's logging thread: a
  ``no-store`` call, or an empty answer, which LiteLLM does not write to its cache);
* a failure: ``async_post_call_failure_deployment_hook``, ``async_log_failure_event`` or
  ``log_failure_event``;
* a call dropped without either (cancelled, a stream abandoned midway): the finaliser on
  LiteLLM's logging object (:meth:`ThriftyCallback._abandoned`).

Shadow audits (``cache.audit_rate``, :mod:`thrifty.audit`): a semantic hit served through
LiteLLM's cache lookup is handed to the gate's ``aaudit`` (async calls: a task of the caller's
event loop) or ``audit`` (sync calls: a thread of its own), with an upstream that calls LiteLLM
again - ``litellm.acompletion`` / ``litellm.completion``, the Router, or the proxy's Router, as the
call was made - on the model the auditor asks for (a Router group's call pins the tier of that
model). Like an escalated re-call, an audit call carries a mark in its metadata that only this
callback recognises (:data:`~litellm_plugins.translate.PARENT`): thrifty lets it through - no
lookup, no join, nothing stored by the normal path (the auditor stores the fresh answer itself on a
disagreement), and it is recorded once, as an audit. A hit whose call was decided without a way to
call again (no recall) is not audited.

Wrong-answer reports: :meth:`ThriftyCallback.report_wrong` (``litellm_plugins.report_wrong``) on
the kwargs of the call, or a call whose metadata has ``thrifty_report_wrong: true``
(:data:`~litellm_plugins.translate.REPORT_WRONG`): the answer that request was served is reported
first (the gate's ``report_wrong``, on the request as thrifty sees it - with the proxy's tenant),
then the call is decided as usual, so it is answered afresh.

thrifty fails open here as everywhere: an error in thrifty's own parts lets the call through
untouched. Only a budget refusal (:class:`~litellm_plugins.errors.BudgetExceededError`) and a
failure shared by the leader of a joined call reach the caller.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litellm
from litellm.caching.caching import Cache
from litellm.exceptions import MidStreamFallbackError
from litellm.integrations.custom_logger import CustomLogger
from thrifty import BudgetExceeded, Completion, Reused, Thrifty, ThriftySettings, Ticket, UpstreamError
from thrifty.log_once import LogOnce
from thrifty.plan import Plan, arun, run
from thrifty.prompt_cache import asks_prompt_cache
from thrifty.reports import Reported
from thrifty.request import OUTPUT_PARAMS
from thrifty.router import Validator

from .errors import BudgetExceededError, CallAbandoned
from .translate import (
    CHAT_CALL_TYPES,
    PARENT,
    REPORT_WRONG,
    THRIFTY,
    TIER_PIN,
    call_id_of,
    completion_of,
    decision_info,
    hit_payload,
    metadata_of,
    thrifty_request,
    user_kwargs,
)

log = logging.getLogger("thrifty.litellm")

DIET_FIELDS = ("messages", "tools", "max_tokens")  # what the prompt diet may change in a call
_ASKED_KEPT = 10_000
_ABSENT = object()

Recall = Callable[..., Awaitable[Any]]
SyncRecall = Callable[..., Any]


@dataclass
class CallState:
    """What thrifty decided for one LiteLLM call, until the call ends."""

    decision: Reused | Ticket | None  # None: thrifty lets the call through untouched
    recall_kwargs: dict[str, Any] = field(default_factory=dict)  # the caller's, for an escalated re-call
    recall: Recall | None = None  # how to call again on a higher tier (and for an audit, async)
    sync_recall: SyncRecall | None = None  # how to call again from a thread (a sync call's audit)
    recall_model: str | None = None  # the model to re-call (a Router's group); None: the ticket's model
    reroute: bool = False  # the call's model must be set to the ticket's (decided before LiteLLM resolved it)
    parent: str | None = None  # this call is thrifty's own: an escalated re-call made for that call, or an audit
    watched: bool = False  # a finaliser on LiteLLM's logging object ends the decision if the call is dropped
    request: dict[str, Any] | None = None  # the request as thrifty decided on it (what an audit audits)
    reported: str | None = None  # what a thrifty_report_wrong flag on this call did (Reported.action)


# What deciding and finishing ask of the gate and the ticket; written once (thrifty.plan),
# performed by blocking calls for LiteLLM's sync path and awaited for its async path.
@dataclass(frozen=True)
class _Begin:
    request: dict[str, Any]
    diet: bool = False  # the call's kwargs will carry what the prompt diet makes of it (apply)
    summarize: Any = None  # how the diet's history summaries are asked (thrifty's own calls)


@dataclass(frozen=True)
class _Report:
    request: dict[str, Any]


@dataclass(frozen=True)
class _Answered:
    ticket: Ticket
    completion: Completion


@dataclass(frozen=True)
class _Complete:
    ticket: Ticket
    completion: Completion
    rejected: str | None


@dataclass(frozen=True)
class _Fail:
    ticket: Ticket
    error: BaseException


@dataclass(frozen=True)
class _Recall:
    state: CallState
    ticket: Ticket
    call_id: str | None


@dataclass(frozen=True)
class _Recalls:
    """How a call can be made again: async (escalation, an async call's audit), from a thread (a
    sync call's audit), and on which model (a Router's group; None: the ticket's or the audit's)."""

    recall: Recall | None
    sync_recall: SyncRecall | None
    model: str | None


class ThriftyCallback(CustomLogger):  # type: ignore[misc]
    """thrifty for ``litellm.completion`` / ``acompletion`` (streaming included), the Router and the
    proxy. Creating one sets ``litellm.cache`` to its :class:`ThriftyCache`; adding it to
    ``litellm.callbacks`` turns on the rest. :func:`litellm_plugins.install` does both.

    Args:
        settings: a :class:`~thrifty.ThriftySettings`, or a path to a YAML file with a ``thrifty:``
            section; default: the environment (``THRIFTY_*``) and the defaults.
        gate: an existing :class:`~thrifty.Thrifty` to use (settings are then ignored).
        validator: your own check of answers, ``(completion, request) -> bool | str``, for
            escalation to a higher tier.
        **overrides: settings fields, e.g. ``cache={"ttl_seconds": 600}``, ``budget={...}``.
    """

    def __init__(self, settings: ThriftySettings | str | Path | None = None, *, gate: Thrifty | None = None,
                 validator: Validator | None = None, **overrides: Any) -> None:
        super().__init__()
        if gate is None:
            gate = Thrifty(ThriftySettings.resolve(settings, **overrides), validator=validator)
        self.gate = gate
        self.cache = ThriftyCache(self)
        self._calls: dict[str, CallState] = {}
        self._lock = threading.Lock()
        self._warn_once = LogOnce(log)
        self._recalls: set[str] = set()  # marks of thrifty's own re-calls in flight: no caller can forge one
        self._asked: OrderedDict[str, dict[str, Any]] = OrderedDict()  # dieted calls: what the caller asked
        if litellm.cache is not None and not isinstance(litellm.cache, ThriftyCache):
            log.warning("thrifty replaces the litellm.cache that was set (%s)", type(litellm.cache).__name__)
        litellm.cache = self.cache

    # ------------------------------------------------------------------ decisions
    def decide(self, kwargs: Mapping[str, Any], *, model: str | None = None, tenant: str | None = None,
               recall: Recall | None = None, recall_model: str | None = None,
               reroute: bool = False, sync_recall: SyncRecall | None = None) -> CallState:
        """Decide for the call ``kwargs`` describes (sync): reuse an answer, or call - on which
        tier, with what reserved. Raises a budget refusal or a joined leader's failure."""
        plan = self._decide_plan(kwargs, model, tenant, _Recalls(recall, sync_recall, recall_model), reroute)
        return run(plan, self._perform)

    async def adecide(self, kwargs: Mapping[str, Any], *, model: str | None = None, tenant: str | None = None,
                      recall: Recall | None = None, recall_model: str | None = None,
                      reroute: bool = False, sync_recall: SyncRecall | None = None, diet: bool = True) -> CallState:
        """Async twin of :meth:`decide`, and the prompt diet's (:mod:`thrifty.diet`) when ``diet``:
        the caller then passes the call's kwargs to :meth:`apply` before LiteLLM sends them, and a
        history summary is asked through ``recall`` as thrifty's own call. (The sync path never
        diets: LiteLLM's sync calls are decided in the cache lookup, too late to change them.)"""
        plan = self._decide_plan(kwargs, model, tenant, _Recalls(recall, sync_recall, recall_model), reroute,
                                 diet=diet)
        return await arun(plan, self._aperform)

    def _decide_plan(self, kwargs: Mapping[str, Any], model: str | None, tenant: str | None, recalls: _Recalls,
                     reroute: bool, *, diet: bool = False) -> Plan[CallState]:
        call_id = call_id_of(kwargs)
        state = self._existing(call_id, kwargs)
        if state is not None:
            return state
        decision: Reused | Ticket | None
        request: dict[str, Any] | None = None
        reported: Reported | None = None
        try:
            request = self._undieted(call_id, thrifty_request(kwargs, model=model, tenant=tenant))
            if _flagged(request["metadata"].pop(REPORT_WRONG, None)):
                reported = yield _Report(request)
            summarize = self._summarizer(kwargs, recalls, reroute) if diet and recalls.recall is not None else None
            decision = yield _Begin(request, diet, summarize)
        except Exception as exc:  # noqa: BLE001 - sorted by _refusal
            self._refusal(exc)
            decision = None
        state = self._remember(call_id, kwargs, decision, recalls, reroute, request)
        state.reported = reported.action if reported is not None else None
        return state

    # ------------------------------------------------------------------ wrong-answer reports
    def report_wrong(self, kwargs: Mapping[str, Any], *, model: str | None = None,
                     tenant: str | None = None) -> Reported:
        """The answer the call ``kwargs`` (as given to ``litellm.completion``, a Router or the
        proxy) was served is wrong for it: the gate's ``report_wrong`` on the request as thrifty
        decided on it (``model``: a Router's group; ``tenant``: imposed, as the proxy does).
        Never raises."""
        try:
            request = thrifty_request(kwargs, model=model, tenant=tenant)
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        request["metadata"].pop(REPORT_WRONG, None)
        return self.gate.report_wrong(request)

    async def areport_wrong(self, kwargs: Mapping[str, Any], *, model: str | None = None,
                            tenant: str | None = None) -> Reported:
        """Async twin of :meth:`report_wrong`."""
        try:
            request = thrifty_request(kwargs, model=model, tenant=tenant)
        except Exception as exc:  # noqa: BLE001 - a report never raises
            return Reported("nothing", detail=repr(exc))
        request["metadata"].pop(REPORT_WRONG, None)
        return await self.gate.areport_wrong(request)

    def state(self, kwargs: Mapping[str, Any]) -> CallState | None:
        """The decision made for the call ``kwargs`` belongs to, if any."""
        call_id = call_id_of(kwargs)
        with self._lock:
            return self._calls.get(call_id) if call_id is not None else None

    def _existing(self, call_id: str | None, kwargs: Mapping[str, Any]) -> CallState | None:
        with self._lock:
            state = self._calls.get(call_id) if call_id is not None else None
        if state is not None and isinstance(state.decision, Ticket) and state.decision.done:
            state = None  # a retry of a call whose first attempt ended: decide again
        if state is None:
            parent = metadata_of(kwargs).get(PARENT)
            with self._lock:
                ours = parent is not None and str(parent) in self._recalls
            if ours:  # thrifty's own re-call on a higher tier: already decided
                state = CallState(None, parent=str(parent))
                if call_id is not None:
                    with self._lock:
                        self._calls[call_id] = state
        return state

    def _refusal(self, exc: Exception) -> None:
        """Budget refusals and a joined leader's failure reach the caller (see
        :func:`reaches_caller`); anything else is thrifty's own failure, and the call goes
        through untouched."""
        if isinstance(exc, BudgetExceeded) and not isinstance(exc, BudgetExceededError):
            raise BudgetExceededError(exc) from None
        if reaches_caller(exc):
            raise exc
        self._warn("decide", exc)

    def _remember(self, call_id: str | None, kwargs: Mapping[str, Any], decision: Reused | Ticket | None,
                  recalls: _Recalls, reroute: bool, request: dict[str, Any] | None) -> CallState:
        state = CallState(decision, recall_kwargs=user_kwargs(kwargs), recall=recalls.recall,
                          sync_recall=recalls.sync_recall, recall_model=recalls.model, reroute=reroute,
                          request=request)
        if call_id is None:  # no later hook could find this decision: the call goes through untouched
            if isinstance(decision, Ticket):
                decision.abandon()
                state.decision = None
            return state
        with self._lock:
            self._calls[call_id] = state
        self._watch(call_id, kwargs, state)
        return state

    def _watch(self, call_id: str, kwargs: Mapping[str, Any], state: CallState) -> None:
        """Cancelled calls and abandoned streams get no callback from LiteLLM; its logging object
        is collected with them (observed on LiteLLM 1.106), which ends the decision."""
        logging_obj = kwargs.get("litellm_logging_obj")
        if state.watched or logging_obj is None:
            return
        try:
            weakref.finalize(logging_obj, self._abandoned, call_id)
            state.watched = True
        except TypeError:
            pass

    def _abandoned(self, call_id: str) -> None:
        state = self._pop(call_id)
        log.debug("thrifty: LiteLLM dropped call %s (%s)", call_id, "open" if state is not None else "finished")
        if state is not None and isinstance(state.decision, Ticket):
            state.decision.fail(CallAbandoned("the call was cancelled, or its stream dropped before the end"))

    def _pop(self, call_id: str | None) -> CallState | None:
        if call_id is None:
            return None
        with self._lock:
            return self._calls.pop(call_id, None)

    def _ticket(self, kwargs: Mapping[str, Any]) -> tuple[CallState | None, Ticket | None]:
        state = self._pop(call_id_of(kwargs))
        if state is None or state.parent is not None or not isinstance(state.decision, Ticket):
            return state, None
        return state, state.decision

    def apply(self, state: CallState, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Carry the decision into the call's kwargs: a reused answer must be looked up (the
        Router passes ``caching=False`` unless told otherwise), a routed call goes to its tier,
        a stream reports its usage (LiteLLM prices a stream without it at 0), and a call that
        goes upstream asks for the provider's prompt cache where the settings say so
        (:func:`thrifty.prompt_cache.asks_prompt_cache`: LiteLLM's ``enable_prompt_caching``,
        which marks the prefix for Claude and leaves other providers' requests as they are; read
        by ``acompletion`` after this hook, ``litellm/main.py``)."""
        decision = state.decision
        if isinstance(decision, Reused):
            kwargs["caching"] = True
            if state.reroute:
                kwargs.setdefault("custom_llm_provider", _provider(kwargs.get("model"), decision.answer.get("model")))
        elif isinstance(decision, Ticket):
            if state.reroute and decision.route.tier is not None and decision.model is not None:
                kwargs["model"] = decision.model
                kwargs["custom_llm_provider"] = _provider(decision.model)
            if kwargs.get("stream"):
                kwargs["stream_options"] = {**(kwargs.get("stream_options") or {}), "include_usage": True}
            if "enable_prompt_caching" not in kwargs and asks_prompt_cache(self.gate.settings, kwargs.get("model")):
                kwargs["enable_prompt_caching"] = True
            if decision.diet is not None:
                self._remember_undieted(call_id_of(kwargs), decision)
                _carry_diet(kwargs, decision)
        return kwargs

    def _remember_undieted(self, call_id: str | None, ticket: Ticket) -> None:
        """Keep what the caller asked, for a retry of this call (LiteLLM's or a Router's, with the
        dieted kwargs) to be decided on the caller's request, never on the dieted one."""
        if call_id is None:
            return
        with self._lock:
            self._asked[call_id] = {key: ticket.request.get(key, _ABSENT) for key in DIET_FIELDS}
            while len(self._asked) > _ASKED_KEPT:
                self._asked.popitem(last=False)

    def _undieted(self, call_id: str | None, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with what its caller asked, when its kwargs were dieted before (a retry)."""
        with self._lock:
            asked = self._asked.get(call_id) if call_id is not None else None
        for key, value in (asked or {}).items():
            if value is _ABSENT:
                request.pop(key, None)
            else:
                request[key] = value
        return request

    def _summarizer(self, kwargs: Mapping[str, Any], recalls: _Recalls,
                    reroute: bool) -> Callable[[dict[str, Any]], Awaitable[Completion]]:
        """How the prompt diet asks for a history summary on this call's behalf: LiteLLM again
        (``recalls.recall``: ``acompletion``, the Router, or the proxy's Router), with the
        caller's credentials and metadata, as thrifty's own call - like an audit."""
        state = CallState(None, recall_kwargs=user_kwargs(kwargs), recall=recalls.recall,
                          recall_model=recalls.model, reroute=reroute)

        async def upstream(request: dict[str, Any]) -> Completion:
            kwargs, mark = self._summary_kwargs(state, request)
            return await self._aown_call(state, kwargs, mark)

        return upstream

    @staticmethod
    def _summary_kwargs(state: CallState, request: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The kwargs of a summary call: the caller's (credentials, metadata), marked as thrifty's
        own, on the summary's model (a Router group's call pins its tier), with the summary's
        messages and sampling in place of everything of the caller's that shapes an answer."""
        mark = f"diet:{uuid.uuid4().hex}"
        model = request.get("model") if isinstance(request.get("model"), str) else None
        kwargs = _own_kwargs(state, mark, model=model, pin=model if state.recall_model is not None else None)
        for key in (*OUTPUT_PARAMS, "messages"):
            kwargs.pop(key, None)
        kwargs.update({k: request[k] for k in ("messages", "max_tokens", "temperature") if k in request})
        return kwargs, mark

    async def _aown_call(self, state: CallState, kwargs: dict[str, Any], mark: str) -> Completion:
        """Make thrifty's own call ``kwargs`` (marked ``mark``) through ``state.recall``."""
        assert state.recall is not None
        with self._own_call(mark):
            response = await state.recall(**kwargs)
        return completion_of(response, model=kwargs.get("model"))

    # ------------------------------------------------------------------ LiteLLM's cache lookup
    def lookup(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The reused answer for this call, if thrifty has one (deciding now if nothing did: a
        sync SDK call, whose audit calls ``litellm.completion`` again)."""
        state = self.state(kwargs) or self.decide(kwargs, sync_recall=litellm.completion)
        hit = self._hit(state, kwargs)
        if hit is not None:
            self._audit(state)
        return hit

    async def alookup(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`lookup`; a hit's audit is a task of the caller's event loop."""
        state = self.state(kwargs) or await self.adecide(kwargs, diet=False)  # too late to change the call
        hit = self._hit(state, kwargs)
        if hit is not None:
            self._aaudit(state)
        return hit

    def _hit(self, state: CallState, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        if not isinstance(state.decision, Reused):
            self._watch(str(call_id_of(kwargs)), kwargs, state)
            return None
        self._pop(call_id_of(kwargs))
        logging_obj = kwargs.get("litellm_logging_obj")
        if logging_obj is not None:
            # LiteLLM prices a response at 0 once its logging object says it is a cache hit
            # (Logging.response_cost_calculator, litellm/litellm_core_utils/litellm_logging.py);
            # its cache path sets that flag only after pricing the response it builds.
            logging_obj.model_call_details["cache_hit"] = True
        payload = hit_payload(state.decision)
        if state.reported is not None:
            payload["_hidden_params"][THRIFTY]["reported"] = state.reported
        return payload

    # ------------------------------------------------------------------ shadow audits
    def _audit(self, state: CallState) -> None:
        """Hand a reused answer served to a sync call to the gate's ``audit`` (a thread of its
        own), with ``state.sync_recall`` as the audit's upstream."""
        reused, recall = state.decision, state.sync_recall
        if not isinstance(reused, Reused) or state.request is None or recall is None:
            return
        try:
            self.gate.audit(state.request, reused, lambda request: self._audit_call(state, request, recall))
        except Exception as exc:  # noqa: BLE001 - an audit never fails its caller
            self._warn("audit", exc)

    def _aaudit(self, state: CallState) -> None:
        """Hand a reused answer served to an async call to the gate's ``aaudit`` (a task of the
        running loop), with ``state.recall`` as the audit's upstream."""
        reused, recall = state.decision, state.recall
        if not isinstance(reused, Reused) or state.request is None or recall is None:
            return

        async def upstream(request: dict[str, Any]) -> Completion:
            kwargs, mark = self._audit_kwargs(state, request)
            return await self._aown_call(state, kwargs, mark)

        try:
            self.gate.aaudit(state.request, reused, upstream)
        except Exception as exc:  # noqa: BLE001 - an audit never fails its caller
            self._warn("audit", exc)

    def _audit_call(self, state: CallState, request: dict[str, Any], recall: SyncRecall) -> Completion:
        kwargs, mark = self._audit_kwargs(state, request)
        with self._own_call(mark):
            response = recall(**kwargs)
        return completion_of(response, model=kwargs.get("model"))

    @staticmethod
    def _audit_kwargs(state: CallState, request: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The caller's kwargs for an audit of ``request`` (the auditor's: its ``model`` is the
        one to ask), marked as thrifty's own call. A Router group's call stays on the group and
        pins the tier of that model (:meth:`litellm_plugins.routing.CostAwareRouting.tier_of`)."""
        mark = f"audit:{uuid.uuid4().hex}"
        model = request.get("model") if isinstance(request.get("model"), str) else None
        return _own_kwargs(state, mark, model=model, pin=model if state.recall_model is not None else None), mark

    @contextmanager
    def _own_call(self, mark: str) -> Iterator[None]:
        """While the block runs, a call whose metadata carries ``mark`` is thrifty's own: let through."""
        with self._lock:
            self._recalls.add(mark)
        try:
            yield
        finally:
            with self._lock:
                self._recalls.discard(mark)

    # ------------------------------------------------------------------ endings
    def finish(self, kwargs: Mapping[str, Any], response: Any) -> None:
        """A call (or a stream) ended with ``response``: hand it to the waiting callers, settle
        the budget, store it if it is a usable answer. Sync calls cannot be re-called on a
        higher tier from here: an answer that fails validation is passed on but not stored."""
        run(self._finish_plan(kwargs, response, escalate=False), self._perform)

    async def afinish(self, kwargs: Mapping[str, Any], response: Any, *, escalate: bool = False) -> Any:
        """Async twin of :meth:`finish`. With ``escalate`` (a whole, non-streamed answer), an
        answer that fails validation is replaced by a re-call on the next tier, as long as one is
        left; returns the response the caller should get."""
        return await arun(self._finish_plan(kwargs, response, escalate=escalate), self._aperform)

    def _finish_plan(self, kwargs: Mapping[str, Any], response: Any, *, escalate: bool) -> Plan[Any]:
        state, ticket = self._ticket(kwargs)
        if ticket is None or state is None:
            return response
        try:
            completion = completion_of(response, model=ticket.model)
            if escalate and state.recall is not None:
                while (yield _Answered(ticket, completion)):
                    try:
                        response = yield _Recall(state, ticket, call_id_of(kwargs))
                    except Exception as exc:  # noqa: BLE001 - the ticket falls back to the answer before
                        log.warning("thrifty: the escalated call failed (%s); keeping the answer before it", exc)
                        yield _Fail(ticket, exc)
                        break
                    completion = completion_of(response, model=ticket.model)
            else:
                yield _Complete(ticket, completion, ticket.validation_failure(completion))
            _annotate(response, ticket, state.reported)
        except Exception as exc:  # noqa: BLE001 - fail open
            self._warn("finish", exc)
            yield _Fail(ticket, exc)
        return response

    async def _recall(self, state: CallState, ticket: Ticket, call_id: str | None) -> Any:
        tier = ticket.route.tier.name if ticket.route.tier is not None else None
        mark = f"{call_id}:{uuid.uuid4().hex}"
        kwargs = _carry_diet(_own_kwargs(state, mark, model=ticket.model, pin=tier), ticket)
        assert state.recall is not None
        with self._own_call(mark):
            return await state.recall(**kwargs)

    def failed(self, kwargs: Mapping[str, Any], error: BaseException | None, *, mid_stream: bool = False) -> None:
        _, ticket = self._ticket(kwargs)
        if ticket is not None:
            ticket.fail(error or CallAbandoned("the call failed"), mid_stream=mid_stream)

    async def afailed(self, kwargs: Mapping[str, Any], error: BaseException | None, *,
                      mid_stream: bool = False) -> None:
        _, ticket = self._ticket(kwargs)
        if ticket is not None:
            await ticket.afail(error or CallAbandoned("the call failed"), mid_stream=mid_stream)

    def _warn(self, where: str, exc: BaseException) -> None:
        self._warn_once(f"{where}:{type(exc).__name__}",
                        "thrifty let a LiteLLM call through untouched after an error in %s: %r", where, exc)

    def _perform(self, op: Any) -> Any:
        if isinstance(op, _Begin):
            return self.gate.begin(op.request)
        if isinstance(op, _Report):
            return self.gate.report_wrong(op.request)
        if isinstance(op, _Answered):
            return op.ticket.answered(op.completion)
        if isinstance(op, _Complete):
            return op.ticket.complete(op.completion, rejected=op.rejected)
        if isinstance(op, _Fail):
            return op.ticket.fail(op.error)
        raise TypeError(f"LiteLLM's sync path cannot perform {type(op).__name__}")  # _Recall: async only

    async def _aperform(self, op: Any) -> Any:
        if isinstance(op, _Begin):
            return await self.gate.abegin(op.request, diet=op.diet, upstream=op.summarize)
        if isinstance(op, _Report):
            return await self.gate.areport_wrong(op.request)
        if isinstance(op, _Answered):
            return await op.ticket.aanswered(op.completion)
        if isinstance(op, _Complete):
            return await op.ticket.acomplete(op.completion, rejected=op.rejected)
        if isinstance(op, _Fail):
            return await op.ticket.afail(op.error)
        return await self._recall(op.state, op.ticket, op.call_id)

    # ------------------------------------------------------------------ LiteLLM hooks
    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """Async calls: decide before LiteLLM's cache lookup, and route ``model`` to the tier."""
        if _call_type(call_type) not in CHAT_CALL_TYPES:
            return None
        state = self.state(kwargs)
        if state is None:
            state = await self.adecide(kwargs, recall=litellm.acompletion, reroute=True)
        self._watch(str(call_id_of(kwargs)), kwargs, state)
        return self.apply(state, kwargs)

    async def async_post_call_success_deployment_hook(self, request_data: dict[str, Any], response: Any,
                                                      call_type: Any) -> Any:
        """Async calls with a whole answer: finish the decision before the caller gets it, with
        escalation to a higher tier when the answer fails validation."""
        if _call_type(call_type) not in CHAT_CALL_TYPES or request_data.get("stream"):
            return None
        return await self.afinish(request_data, response, escalate=True)

    async def async_post_call_failure_deployment_hook(self, request_data: Mapping[str, Any], exception: Exception,
                                                      call_type: Any, fallback_depth: int | None = None) -> None:
        await self.afailed(request_data, exception)

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.finish(kwargs, response_obj)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        await self.afinish(kwargs, response_obj)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        error = kwargs.get("exception")
        self.failed(kwargs, error, mid_stream=_mid_stream(error))

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        error = kwargs.get("exception")
        await self.afailed(kwargs, error, mid_stream=_mid_stream(error))


class ThriftyCache(Cache):  # type: ignore[misc]
    """``litellm.cache`` for thrifty: lookups ask the callback's decision; LiteLLM's writes (made
    when a call or a stream ends) finish it. thrifty's own store keeps the answers."""

    def __init__(self, callback: ThriftyCallback) -> None:
        # max_messages=None: LiteLLM skips requests with more than 4 messages by default
        super().__init__(max_messages=None, supported_call_types=list(CHAT_CALL_TYPES))
        self.callback = callback

    def get_cache(self, dynamic_cache_object: Any = None, **kwargs: Any) -> Any:
        try:
            return self.callback.lookup(kwargs)
        except Exception as exc:  # noqa: BLE001 - a raise here fails the call: only a refusal may
            return self._lookup_failed(exc)

    async def async_get_cache(self, dynamic_cache_object: Any = None, **kwargs: Any) -> Any:
        try:
            return await self.callback.alookup(kwargs)
        except Exception as exc:  # noqa: BLE001 - a raise here fails the call: only a refusal may
            return self._lookup_failed(exc)

    def _lookup_failed(self, exc: Exception) -> None:
        if reaches_caller(exc):
            raise exc
        self.callback._warn("lookup", exc)

    def add_cache(self, result: Any, dynamic_cache_object: Any = None, **kwargs: Any) -> None:
        try:  # a raise here would fail a call that succeeded (litellm/caching/caching_handler.py)
            self.callback.finish(kwargs, result)
        except Exception as exc:  # noqa: BLE001
            self.callback._warn("store", exc)

    async def async_add_cache(self, result: Any, dynamic_cache_object: Any = None, **kwargs: Any) -> None:
        try:
            await self.callback.afinish(kwargs, result)
        except Exception as exc:  # noqa: BLE001
            self.callback._warn("store", exc)


def _own_kwargs(state: CallState, mark: str, *, model: str | None, pin: str | None) -> dict[str, Any]:
    """The caller's kwargs for a call thrifty makes itself (an escalated re-call or an audit):
    marked ``mark`` as thrifty's own, not streamed, without the caller's report flag, on ``model`` -
    or on the Router's group, with the tier ``pin`` pinned."""
    kwargs = dict(state.recall_kwargs)
    kwargs.pop("stream", None)
    kwargs.pop("stream_options", None)
    metadata = {k: v for k, v in (kwargs.get("metadata") or {}).items() if k != REPORT_WRONG}
    metadata[PARENT] = mark
    if pin is not None:
        metadata[TIER_PIN] = pin
    if state.recall_model is not None or model is not None:
        kwargs["model"] = state.recall_model or model
    if state.reroute and model is not None:  # a LiteLLM model name, not one of a Router's
        kwargs["custom_llm_provider"] = _provider(model)
    kwargs["metadata"] = metadata
    return kwargs


def _carry_diet(kwargs: dict[str, Any], ticket: Ticket) -> dict[str, Any]:
    """Put into the call's ``kwargs`` what the prompt diet changed in the ticket's request (its
    messages, tools, max_tokens), and nothing else."""
    sent, asked = ticket.sent, ticket.request
    for key in DIET_FIELDS:
        if key in sent and sent[key] != asked.get(key):
            kwargs[key] = sent[key]
    return kwargs


def reaches_caller(exc: BaseException) -> bool:
    """Whether an error from thrifty's decision is the caller's to see: a budget refusal, or the
    failure of the joined call it was waiting for (an upstream error, with its HTTP status)."""
    return isinstance(exc, (BudgetExceeded, UpstreamError)) or getattr(exc, "status_code", None) is not None


def _annotate(response: Any, ticket: Ticket, reported: str | None = None) -> None:
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden[THRIFTY] = decision_info(ticket)
        if reported is not None:
            hidden[THRIFTY]["reported"] = reported


def _flagged(value: Any) -> bool:
    """Whether a metadata flag is set: ``true`` (JSON or YAML), or the string ``"true"``."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _call_type(call_type: Any) -> str:
    return str(getattr(call_type, "value", call_type))


def _mid_stream(error: Any) -> bool:
    return isinstance(error, MidStreamFallbackError)


def _provider(*models: Any) -> str:
    """The LiteLLM provider of the first model LiteLLM can place (``openai`` if none): a reused
    answer's call never reaches it, but LiteLLM's cache path resolves one."""
    for model in models:
        if isinstance(model, str):
            try:
                return str(litellm.get_llm_provider(model=model)[1])
            except Exception:  # noqa: BLE001 - try the next
                continue
    return "openai"
