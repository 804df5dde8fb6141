"""A separate OS process using the batch lane through LiteLLM, for the crash tests.

    python batch_worker.py DIR URL MODE

Its cache, ledger and batch queue are files in DIR; URL is the stand-in's. MODE:

* ``first:<stage>``: defer :data:`REQUESTS` (tenant ``acme``; the last repeats the first), write
  their ids to ``DIR/ids.json``, then flush and poll; at ``<stage>`` (``queued``: once every
  request is queued; else one of :data:`thrifty.batch_lane.STAGES`) write ``DIR/at-<stage>`` and
  wait forever, for the test to kill it;
* ``resume``: start a lane on the same files (it resumes), flush, wait for every id's result, and
  print one JSON object: each id's answer and source, whether each request is now a cache hit,
  and the queue's counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from thrifty.gate import Reused, Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins

QUESTIONS = ["What is the refund policy?", "Where is order 4471?", "How do I reset my password?",
             "What is the refund policy?"]
MODEL = "gpt-4o-mini"


def kwargs(question: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "metadata": {"tenant": "acme"}}


def main() -> None:
    folder, url, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    settings = ThriftySettings(
        cache={"backend": "embedded", "path": folder / "cache.sqlite3", "semantic": False},
        verifier={"kind": "rules"}, ledger={"path": folder / "ledger.jsonl"},
        budget={"limits": [{"scope": "tenant", "usd": 5.0}]},
        batch={"path": folder / "queue.sqlite3", "poll_seconds": 0.05, "max_wait_seconds": 3600})
    gate = Thrifty(settings)
    kill_at = mode.split(":", 1)[1] if mode.startswith("first:") else None

    def mark(stage: str) -> None:
        (folder / f"at-{stage}").write_text(stage)

    async def on_stage(stage: str, ident: str) -> None:
        if stage == kill_at and stage != "queued":  # "queued": once all are (below)
            mark(stage)
            await asyncio.Event().wait()  # killed here

    lane = litellm_plugins.BatchLane(gate=gate, api_base=url, api_key="sk-standin", on_stage=on_stage)

    async def first() -> None:
        futures = [await lane.defer(**kwargs(q)) for q in QUESTIONS]
        ids = folder / "ids.json"
        ids.with_suffix(".tmp").write_text(json.dumps([f.request_id for f in futures]))
        ids.with_suffix(".tmp").replace(ids)
        if kill_at == "queued":
            mark("queued")
            await asyncio.Event().wait()
        await lane.flush()
        while True:  # until a stage stops it
            await lane.poll()
            await asyncio.sleep(0.02)

    async def resume() -> dict[str, Any]:
        ids = json.loads((folder / "ids.json").read_text())
        async with lane:
            await lane.flush()
            results = {i: await asyncio.wait_for(lane.result(i), 60) for i in ids}
        hits = [isinstance(gate.lookup(lane.lane.queue.get(i).request), Reused) for i in ids]  # type: ignore[union-attr]
        return {"results": {i: {"content": r.choices[0].message.content,
                                "source": r._hidden_params["thrifty"]["source"]} for i, r in results.items()},
                "hits": hits, "counts": lane.pending()}

    if kill_at is not None:
        asyncio.run(first())
    else:
        print(json.dumps(asyncio.run(resume())), flush=True)
    gate.close()


if __name__ == "__main__":
    main()
