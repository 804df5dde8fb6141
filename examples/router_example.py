"""A LiteLLM Router whose model group ``auto`` is a set of tiers, routed by thrifty.

What it shows:

1. an easy question is routed to the cheap tier (gpt-4o-mini);
2. a hard one - a multi-step proof - to the premium tier (gpt-4o), by thrifty's rules scorer
   (length, maths, "prove", "derive", "step by step", code, ... raise the score);
3. an answer that fails validation on the cheap tier (a refusal) is escalated to premium: the
   caller gets the premium answer, with the escalation in the decision info;
4. the decision info of each call, from ``response._hidden_params["thrifty"]``.

Run it from the repository root::

    python examples/router_example.py                          # against the bundled stand-in provider
    OPENAI_API_KEY=sk-... python examples/router_example.py    # against OpenAI (a few cents at most)

On the stand-in (``thrifty.standin``, started by ``examples/standin.py``), the directive
``[refuse-if:mini]`` in the third question makes gpt-4o-mini refuse. A real gpt-4o-mini would
answer it, so against a real provider a validator of your own rejects the cheap tier's answer to
that one request instead (``install(validator=...)``: any ``(completion, request) -> bool | str``).
Escalation happens on async, non-streamed calls (``await router.acompletion(...)``). The cache lives
in a temporary directory, so every run starts cold.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from standin import ensure_provider, standin_stats  # first: offline defaults before litellm is imported

# isort: split
from litellm.router import Router
from thrifty.completion import Completion

import litellm_plugins
from litellm_plugins import CostAwareRouting


def deployment(model: str, tier: str) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model}
    if os.environ.get("OPENAI_API_BASE"):
        params["api_base"] = os.environ["OPENAI_API_BASE"]
    return {"model_name": "auto", "litellm_params": params, "model_info": {"thrifty_tier": tier}}


def strict_for_demo(completion: Completion, request: Mapping[str, Any]) -> bool | str:
    """A validator of your own (used against a real provider): rejects the cheap model's answer to
    the request tagged ``{"demo": "escalate"}``, as if it had failed a domain check."""
    metadata = request.get("metadata") or {}
    if metadata.get("demo") == "escalate" and "mini" in str(completion.model):
        return "the cheap tier's answer failed the domain check"
    return True


async def ask(router: Router, step: str, question: str, **kwargs: Any) -> dict[str, Any]:
    response = await router.acompletion(model="auto", messages=[{"role": "user", "content": question}], **kwargs)
    info: dict[str, Any] = dict(response._hidden_params.get("thrifty") or {})
    print(f"\n{step}: {question!r}")
    print(f"  answered by:  {response.model}")
    print(f"  answer:       {response.choices[0].message.content}")
    print(f"  thrifty:      {info}")
    print(f"  => tier {info.get('tier')!r} (route: {info.get('route')}"
          + (f", escalated after: {', '.join(info['escalations'])}" if info.get("escalations") else "") + ")")
    return info


async def main() -> None:
    with ensure_provider() as standin_url, tempfile.TemporaryDirectory() as tmp:
        print(f"provider: {'the stand-in at ' + standin_url if standin_url else 'OpenAI (OPENAI_API_KEY)'}")
        router = Router(model_list=[deployment("openai/gpt-4o-mini", "cheap"),
                                            deployment("openai/gpt-4o", "premium")])

        litellm_plugins.install(cache={"path": Path(tmp) / "cache.sqlite3"},
                                validator=None if standin_url else strict_for_demo)
        strategy = CostAwareRouting.install(router)  # routes the "auto" group by tier
        print(f"routing: {strategy}")

        await ask(router, "1. an easy question", "What is the capital of France?")
        await ask(router, "2. a hard question",
                  "Prove step by step that the square root of 2 is irrational, then derive a bound on how well "
                  "it can be approximated by fractions p/q and explain why the bound holds.")
        refusal = " [refuse-if:mini]" if standin_url else ""
        await ask(router, "3. an answer that fails validation on the cheap tier",
                  f"What is the return policy for tents bought online?{refusal}",
                  metadata={"demo": "escalate"})
        if standin_url:
            print(f"\nupstream calls by model (stand-in): {standin_stats(standin_url)['by_model']}")
        litellm_plugins.uninstall()


if __name__ == "__main__":
    asyncio.run(main())
