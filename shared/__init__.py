"""thrifty: cut the LLM bill of multi-agent systems without serving wrong answers.

The framework-free core. Its front door is the gate, :class:`Thrifty`: the cache, single-flight,
the router and the budgets behind one call, with every call made and avoided in its ledger::

    from thrifty import Completion, Thrifty

    gate = Thrifty()                                    # or Thrifty(ThriftySettings.load("config.yaml"))
    result = gate.call(request, call_the_model)         # request: an OpenAI-format chat request
    # call_the_model(call_request) -> Completion; result: a Completion, or Reused(answer, source, ...)
    gate.report_wrong(request)                          # that answer was wrong: never serve it again

The parts are usable on their own: :class:`SemanticCache` (lookups and stores of canonical
requests, :func:`canonicalize`), :class:`~thrifty.budget.Budget`, :class:`~thrifty.router.Router`.
"""

from .blocks import Block
from .budget import BudgetExceeded, UnpricedModel
from .cache import CacheStats, Lookup, SemanticCache, Stored
from .completion import Completion
from .embedded_store import EmbeddedStore
from .embedder import Embedder, SentenceTransformerEmbedder
from .gate import Reused, Thrifty
from .ledger import Ledger, LedgerEvent
from .reports import Reported
from .request import CanonicalRequest, InvalidRequest, canonicalize
from .settings import SettingsError, ThriftySettings
from .store import CacheEntry, Store
from .ticket import Ticket
from .upstream import LeaderGaveUp, StreamFailed, UpstreamError
from .verifier import RuleVerifier, Verdict, Verifier

__all__ = [
    "Block", "BudgetExceeded", "CacheEntry", "CacheStats", "CanonicalRequest", "Completion", "EmbeddedStore",
    "Embedder", "InvalidRequest", "LeaderGaveUp", "Ledger", "LedgerEvent", "Lookup", "Reported", "Reused",
    "RuleVerifier", "SemanticCache", "SentenceTransformerEmbedder", "SettingsError", "Store", "Stored",
    "StreamFailed", "Thrifty", "ThriftySettings", "Ticket", "UnpricedModel", "UpstreamError", "Verdict", "Verifier",
    "canonicalize",
]
