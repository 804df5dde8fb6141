"""A separate OS process spending against a shared Redis budget.

    python budget_worker.py URL PREFIX CALLS

Reserves and settles CALLS concurrent calls (threads) against a $0.50 tenant limit once the
test sets the go key; prints {"ok": n, "refused": n, "messages": [...]}.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis
from thrifty.budget import Budget, BudgetExceeded
from thrifty.pricing import PriceTable
from thrifty.redis_budget import RedisBudgetStore
from thrifty.request import canonicalize
from thrifty.settings import BudgetSettings, ModelPrice, RedisSettings


def main() -> None:
    url, prefix, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prices = PriceTable({"big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
    budget = Budget(BudgetSettings(limits=[{"scope": "tenant", "usd": 0.5}]), prices,  # type: ignore[list-item]
                    store=RedisBudgetStore(url, RedisSettings(key_prefix=prefix, operation_timeout=5)))
    request = {"model": "big-model", "max_tokens": 100, "metadata": {"tenant": "acme"},
               "messages": [{"role": "user", "content": "What is the refund policy?"}]}
    canon = canonicalize(request)
    assert (budget.worst_case(request, "big-model") or 0) >= 0.003  # the cost settled below
    client = redis.Redis.from_url(url)
    counts = {"ok": 0, "refused": 0}
    messages: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            reservation = budget.reserve(request, canon, "big-model")
        except BudgetExceeded as exc:
            with lock:
                counts["refused"] += 1
                messages.append(str(exc))
            return
        time.sleep(0.005)  # the call
        budget.settle(reservation, 0.003)
        with lock:
            counts["ok"] += 1

    client.incr(f"{prefix}:ready")
    while not client.exists(f"{prefix}:go"):
        time.sleep(0.005)
    threads = [threading.Thread(target=one) for _ in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({**counts, "messages": messages[:5]}))


if __name__ == "__main__":
    main()
