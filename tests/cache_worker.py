"""A separate OS process using the cache: ``python cache_worker.py URL PREFIX store|lookup TEXT``.

Prints one JSON object: the store or lookup result. Used by the Redis tests to prove that
processes share one cache.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.request import canonicalize
from thrifty.settings import ThriftySettings


def main() -> None:
    url, prefix, action, text = sys.argv[1:5]
    settings = ThriftySettings(cache={"backend": "redis", "redis_url": url}, redis={"key_prefix": prefix},
                               ledger={"path": None})
    cache = SemanticCache(settings)
    request = canonicalize({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}, settings)
    if action == "store":
        stored = cache.store(request, Completion(answer={"content": f"answer from pid {os.getpid()}"},
                                                 text="an answer"))
        print(json.dumps({"stored": stored.stored, "pid": os.getpid()}))
    else:
        found = cache.lookup(request)
        print(json.dumps({"hit": found.hit, "tier": found.tier, "answer": found.answer, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
