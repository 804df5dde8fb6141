"""thrifty: cut the LLM bill of multi-agent systems without serving wrong answers.

The framework-free core. Start with :class:`SemanticCache`::

    from thrifty import Completion, SemanticCache

    cache = SemanticCache()
    found = cache.lookup(request)          # an OpenAI-format chat request
    if not found.hit:
        response = call_the_model(request)
        cache.store(request, Completion(answer=response, text=..., finish_reason="stop"))
"""

from .cache import CacheStats, Completion, Lookup, SemanticCache, Stored
from .embedded_store import EmbeddedStore
from .embedder import Embedder, SentenceTransformerEmbedder
from .gate import Reused, StreamFailed, Thrifty, Ticket, UpstreamError
from .ledger import Ledger, LedgerEvent
from .request import CanonicalRequest, InvalidRequest, canonicalize
from .settings import SettingsError, ThriftySettings
from .store import CacheEntry, Store
from .verifier import RuleVerifier, Verdict, Verifier

__all__ = [
    "CacheEntry", "CacheStats", "CanonicalRequest", "Completion", "EmbeddedStore", "Embedder",
    "InvalidRequest", "Ledger", "LedgerEvent", "Lookup", "Reused", "RuleVerifier", "SemanticCache",
    "SentenceTransformerEmbedder", "SettingsError", "Store", "Stored", "StreamFailed", "Thrifty",
    "ThriftySettings", "Ticket", "UpstreamError", "Verdict", "Verifier", "canonicalize",
]
