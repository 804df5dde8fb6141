"""The stand-in provider's files and batches endpoints (OpenAI's Batch API, offline).

    POST /v1/files                  multipart: file (JSONL), purpose=batch     -> a file object
    GET  /v1/files/{id}             the file object
    GET  /v1/files/{id}/content     the file's bytes
    POST /v1/batches                {input_file_id, endpoint, completion_window, metadata} -> a batch
    GET  /v1/batches                the batches, newest first (``after``, ``limit``)
    GET  /v1/batches/{id}           a batch
    POST /v1/batches/{id}/cancel    cancel a batch that has not ended

Each line of a batch's input file (``{"custom_id", "method", "url", "body"}``) is answered as
``POST /v1/chat/completions`` answers that body - the same default answer, :class:`World`, JSON
output and token counts - and the answers are written to the batch's output file
(``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``), in the
order of the input. A line with ``[status:<code>]`` gets that status and an error body.

When a batch is answered: at once (a task of the server's loop starts on creation), unless a line
holds it - ``[hold:<name>]`` anywhere in the batch keeps it ``in_progress`` until
``POST /release/<name>``, as it holds a chat call - so a test decides when a batch ends by what it
has seen, never by a delay. A line with ``[batch:expire]`` or ``[batch:fail]`` makes the whole
batch end ``expired`` or ``failed`` with no output (a provider's own failure).

The batch lane's books are apart from the chat calls': ``stats()["batch"]`` counts the batches
created, the lines answered, and the tokens billed for them, in all and per model (a provider
bills these at its batch price).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .standin import StandIn

_BATCH_DIRECTIVE = re.compile(r"\[batch:(expire|fail)\]")


class BatchDesk:
    """The files and batches of one :class:`~thrifty.standin.StandIn`, and their counters."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()  # batches, lines, files, cancelled
        self.billed: dict[str, Counter[str]] = {}  # model -> prompt_tokens, completion_tokens
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/files", self._create_file)
            app.router.add_get(f"{prefix}/files/{{file_id}}", self._file)
            app.router.add_get(f"{prefix}/files/{{file_id}}/content", self._file_content)
            app.router.add_post(f"{prefix}/batches", self._create_batch)
            app.router.add_get(f"{prefix}/batches", self._list_batches)
            app.router.add_get(f"{prefix}/batches/{{batch_id}}", self._batch)
            app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self._cancel)

    # ------------------------------------------------------------------ counters
    def stats(self) -> dict[str, Any]:
        """Batches created, lines answered, files uploaded, batches cancelled, and the tokens
        billed for the lines, in all and per model."""
        return {"batches": self.counts["batches"], "lines": self.counts["lines"], "files": self.counts["files"],
                "cancelled": self.counts["cancelled"],
                "prompt_tokens": sum(c["prompt_tokens"] for c in self.billed.values()),
                "completion_tokens": sum(c["completion_tokens"] for c in self.billed.values()),
                "tokens_by_model": {model: dict(c) for model, c in self.billed.items()},
                "in_progress": sum(1 for b in self.batches.values() if b["status"] == "in_progress")}

    def reset(self) -> None:
        self.counts.clear()
        self.billed.clear()

    # ------------------------------------------------------------------ files
    async def _create_file(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if not isinstance(upload, web.FileField):
            return _error(400, "a multipart 'file' is required")
        file_id = self._store_file(upload.file.read(), upload.filename or "upload.jsonl", purpose)
        self.counts["files"] += 1
        return web.json_response(self.files[file_id][0])

    async def _file(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["file_id"])
        return web.json_response(found[0]) if found is not None else _error(404, "no such file")

    async def _file_content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["file_id"])
        if found is None:
            return _error(404, "no such file")
        return web.Response(body=found[1], content_type="application/octet-stream")

    def _store_file(self, content: bytes, name: str, purpose: str) -> str:
        file_id = f"file-standin{uuid.uuid4().hex[:16]}"
        meta = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed", "status_details": None}
        self.files[file_id] = (meta, content)
        return file_id

    # ------------------------------------------------------------------ batches
    async def _create_batch(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        file_id = str(body.get("input_file_id"))
        found = self.files.get(file_id)
        if found is None:
            return _error(400, f"no input file {file_id!r}")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, "this stand-in batches /v1/chat/completions only")
        try:
            lines = [json.loads(line) for line in found[1].decode().splitlines() if line.strip()]
        except ValueError:
            return _error(400, "the input file is not JSONL")
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": f"batch_standin{uuid.uuid4().hex[:16]}", "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": file_id, "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": now, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or None}
        self.batches[batch["id"]] = batch
        self.counts["batches"] += 1
        task = asyncio.get_running_loop().create_task(self._run(batch, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch)

    async def _list_batches(self, request: web.Request) -> web.Response:
        listed = sorted(self.batches.values(), key=lambda b: (b["created_at"], b["id"]), reverse=True)
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in listed]
            listed = listed[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit") or 20)
        page = listed[:limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(listed) > limit})

    async def _batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        return web.json_response(batch) if batch is not None else _error(404, "no such batch")

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelled", cancelling_at=int(time.time()), cancelled_at=int(time.time()))
            self.counts["cancelled"] += 1
        return web.json_response(batch)

    async def _run(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        texts = json.dumps(lines)
        held = sorted(set(re.findall(r"\[hold:([^\]]+)\]", texts)))
        for name in held:
            self.standin.held[name] += 1
            try:
                await self.standin._releases.setdefault(name, asyncio.Event()).wait()
            finally:
                self.standin.held[name] -= 1
        if batch["status"] != "in_progress":  # cancelled while held
            return
        ending = _BATCH_DIRECTIVE.search(texts)
        now = int(time.time())
        if ending is not None:
            ended = "expired" if ending.group(1) == "expire" else "failed"
            batch.update(status=ended, **{f"{ended}_at": now})
            return
        out: list[dict[str, Any]] = []
        for index, line in enumerate(lines):
            status, body = self._answer(line.get("body") or {})
            out.append({"id": f"batch_req_{batch['id']}_{index}", "custom_id": line.get("custom_id"),
                        "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex[:12]}",
                                     "body": body}, "error": None})
        failed = sum(1 for line in out if line["response"]["status_code"] != 200)
        batch.update(status="completed", finalizing_at=now, completed_at=now,
                     output_file_id=self._store_file("".join(json.dumps(line) + "\n" for line in out).encode(),
                                                     f"{batch['id']}_output.jsonl", "batch_output"),
                     request_counts={"total": len(lines), "completed": len(lines) - failed, "failed": failed})

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line's answer, as the chat endpoint would give it (whole, not streamed), and its
        billing in the batch books."""
        from .standin import answer_for, reply_message, text_and_usage

        model = str(body.get("model", ""))
        answer, directives = answer_for(body)
        if "status" in directives:
            code = int(directives["status"])
            return code, {"error": {"message": f"stand-in failure {code}", "type": "server_error", "code": str(code)}}
        world = self.standin.world
        answer, usage = text_and_usage(body, answer, world.answer(body, model) if world is not None else None)
        self.counts["lines"] += 1
        self.billed.setdefault(model, Counter()).update(
            {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]})
        message, finish = reply_message(body, answer, directives, f"call_standin{uuid.uuid4().hex[:8]}")
        return 200, {"id": f"chatcmpl-standinbatch{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                     "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                     "usage": usage, "system_fingerprint": "fp_standin"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)
