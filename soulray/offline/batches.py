"""The local server's Batch API: `/v1/files` and `/v1/batches`, as OpenAI's behave (DESIGN.md, "How real
providers behave"), so the batch backend (soulray/llm/batch.py) is tested against what a real account does.

- Files: upload (multipart, purpose `batch`), metadata, content, delete. Output and error files are files too.
- Batches: created from an uploaded file; validated (one JSON request a line, unique `custom_id`s, one
  endpoint and one model a file, ≤ `max_requests` lines and ≤ `max_bytes`), then `validating` →
  `in_progress` → `finalizing` → `completed`; `failed` when validation fails (errors on the batch, no
  output); `expired` when the completion window passes first (what finished is in the output file, the rest
  in the error file with `batch_expired`); `cancelling` → `cancelled` on cancel (the same split, with
  `batch_cancelled`). Faults drawn per line (the server's `Faults`) make failed lines (5xx, timeouts) and
  the same malformed, truncated or refused completions as online.
- A queue of enqueued prompt tokens per key and model: a batch whose prompt tokens (as this server counts
  them) would take the lane over `queue_tokens` fails at validation with `token_limit_exceeded`, as
  OpenAI's does. The highest queue each lane ever held is kept (`stats`), so tests check the limit on the
  server's side, whatever the client believes.
- Time is scaled: `time_scale` simulated seconds pass each real second, so a 24 h window passes in seconds.
  States are derived from the clock when asked: nothing runs in the background.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from soulray.offline.server import LocalLLMServer

ENDPOINT = "/v1/chat/completions"
LIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchSettings:
    """How the local server's Batch API behaves; durations are simulated seconds."""

    time_scale: float = 1.0  # simulated seconds per real second (86,400 / 4: a day in 4 s)
    validate_s: float = 60.0
    latency_s: float = 3600.0  # from in_progress to the last line answered
    finalize_s: float = 60.0
    window_s: float = 86_400.0  # the only window OpenAI offers: "24h"
    max_requests: int = 50_000  # OpenAI's limits per input file
    max_bytes: int = 200 * 1024 * 1024
    queue_tokens: int | None = None  # enqueued prompt tokens per key and model (None: unlimited)
    expire: tuple[int, ...] = ()  # ordinals (1 = first created) of batches that run out of time
    expired_done_share: float = 0.5  # what an expiring batch has answered when its window ends


@dataclass
class _File:
    id: str
    owner: str
    purpose: str
    filename: str
    content: bytes
    created_at: int


@dataclass
class _Batch:
    id: str
    owner: str
    ordinal: int
    input_file_id: str
    model: str
    requests: list[dict[str, Any]]
    prompt_tokens: int
    created: float  # real monotonic clock
    created_at: int
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancelled: float | None = None  # simulated seconds since creation when cancel was asked
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    settled: str | None = None  # terminal status once its files are written


@dataclass
class BatchStats:
    """What the server did, per key (the label of tests' stats): the evidence tests check."""

    created: int = 0
    failed_validation: Counter = field(default_factory=Counter)  # code → batches
    lines_answered: int = 0  # paid
    lines_failed: Counter = field(default_factory=Counter)  # code → lines
    max_queue: dict[str, int] = field(default_factory=dict)  # model → the most prompt tokens ever enqueued
    largest_file: tuple[int, int] = (0, 0)  # (requests, bytes) of the largest input file a batch was made of


class BatchService:
    def __init__(self, server: LocalLLMServer, settings: BatchSettings) -> None:
        self.server, self.settings = server, settings
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.stats: dict[str, BatchStats] = {}
        self.paid: Counter = Counter()  # call id (model, messages, seed) → lines answered: > 1 is paid twice
        self._ids = itertools.count(1)

    def mount(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._file)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_delete("/v1/files/{id}", self._delete)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)

    # -- files ------------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        owner = self._owner(request)
        if owner is None:
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        purpose, filename, content = None, "upload.jsonl", b""
        async for part in await request.multipart():
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename, content = part.filename or filename, bytes(await part.read())
        if purpose != "batch":
            return _error(400, "invalid_request_error", f"purpose must be 'batch', not {purpose!r}")
        if len(content) > self.settings.max_bytes:
            return _error(400, "invalid_request_error", f"file of {len(content)} bytes exceeds {self.settings.max_bytes}")
        return web.json_response(self._file_object(self._add_file(owner, "batch", filename, content)))

    def _add_file(self, owner: str, purpose: str, filename: str, content: bytes) -> _File:
        with self.server._lock:
            file = _File(f"file-{next(self._ids):08d}", owner, purpose, filename, content, int(time.time()))
            self.files[file.id] = file
        return file

    async def _file(self, request: web.Request) -> web.Response:
        file = self._owned(self.files, request)
        return web.json_response(self._file_object(file)) if file else _error(404, "not_found", "No such file.")

    async def _content(self, request: web.Request) -> web.Response:
        file = self._owned(self.files, request)
        if file is None:
            return _error(404, "not_found", "No such file.")
        return web.Response(body=file.content, content_type="application/octet-stream")

    async def _delete(self, request: web.Request) -> web.Response:
        file = self._owned(self.files, request)
        if file is None:
            return _error(404, "not_found", "No such file.")
        del self.files[file.id]
        return web.json_response({"id": file.id, "object": "file", "deleted": True})

    @staticmethod
    def _file_object(file: _File) -> dict[str, Any]:
        return {"id": file.id, "object": "file", "bytes": len(file.content), "created_at": file.created_at,
                "filename": file.filename, "purpose": file.purpose, "status": "processed"}

    # -- batches ----------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        owner = self._owner(request)
        if owner is None:
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        body = await request.json()
        if body.get("endpoint") != ENDPOINT or body.get("completion_window") != "24h":
            return _error(400, "invalid_request_error", f"endpoint must be {ENDPOINT} and completion_window '24h'")
        file = self.files.get(body.get("input_file_id", ""))
        if file is None or file.owner != owner or file.purpose != "batch":
            return _error(400, "invalid_request_error", "input_file_id: no such file with purpose 'batch'")
        requests, errors = self._validate(file)
        model = requests[0]["body"].get("model", "") if requests else ""
        tokens = sum(self.server.config.count_messages(r["body"].get("messages") or []) for r in requests)
        with self.server._lock:
            stats = self.stats.setdefault(_label(owner), BatchStats())
            stats.created += 1
            batch = _Batch(id=f"batch_{next(self._ids):08d}", owner=owner, ordinal=len(self.batches) + 1,
                           input_file_id=file.id, model=model, requests=requests, prompt_tokens=tokens,
                           created=time.monotonic(), created_at=int(time.time()), metadata=body.get("metadata"),
                           errors=errors)
            batch.counts["total"] = len(requests)
            if not errors:
                enqueued = self._enqueued(owner, model) + tokens
                limit = self.settings.queue_tokens
                if limit is not None and enqueued > limit:
                    batch.errors = [{"code": "token_limit_exceeded", "line": None, "param": None, "message":
                                     f"Enqueued token limit reached for {model}: limit {limit}, already enqueued "
                                     f"{enqueued - tokens}, this batch {tokens}."}]
                else:
                    stats.max_queue[model] = max(stats.max_queue.get(model, 0), enqueued)
                    stats.largest_file = max(stats.largest_file, (len(requests), len(file.content)))
            for error in batch.errors[:1]:
                stats.failed_validation[error["code"]] += 1
            self.batches[batch.id] = batch
        return web.json_response(self._batch_object(batch))

    def _validate(self, file: _File) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The file's requests, or the errors that fail the batch at validation (as OpenAI lists them)."""
        def fail(code: str, message: str, line: int | None = None) -> tuple[list, list]:
            return [], [{"code": code, "message": message, "line": line, "param": None}]

        if len(file.content) > self.settings.max_bytes:
            return fail("file_too_large", f"input file exceeds {self.settings.max_bytes} bytes")
        requests, seen, models = [], set(), set()
        for number, line in enumerate(file.content.decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                custom_id, body = request["custom_id"], request["body"]
            except (json.JSONDecodeError, KeyError, TypeError):
                return fail("invalid_json_line", "each line must be a JSON request with custom_id and body", number)
            if request.get("method") != "POST" or request.get("url") != ENDPOINT:
                return fail("invalid_url", f"method must be POST and url {ENDPOINT}", number)
            if custom_id in seen:
                return fail("duplicate_custom_id", f"custom_id {custom_id!r} appears twice", number)
            seen.add(custom_id)
            models.add(body.get("model"))
            requests.append(request)
        if not requests:
            return fail("empty_file", "the input file holds no requests")
        if len(requests) > self.settings.max_requests:
            return fail("too_many_requests", f"{len(requests)} requests exceed {self.settings.max_requests} a batch")
        if len(models) > 1:
            return fail("mixed_models", "a batch's requests must all name the same model")
        return requests, []

    def _enqueued(self, owner: str, model: str) -> int:
        """Prompt tokens of this key's live batches of `model` (lock held)."""
        return sum(b.prompt_tokens for b in self.batches.values()
                   if b.owner == owner and b.model == model and not b.errors and self._status(b) in LIVE)

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._owned(self.batches, request)
        return web.json_response(self._batch_object(batch)) if batch else _error(404, "not_found", "No such batch.")

    async def _list(self, request: web.Request) -> web.Response:
        owner = self._owner(request)
        if owner is None:
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        limit = int(request.query.get("limit", "20"))
        mine = [b for b in reversed(list(self.batches.values())) if b.owner == owner]  # newest first
        after = request.query.get("after")
        if after:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        page = mine[:limit]
        return web.json_response({"object": "list", "data": [self._batch_object(b) for b in page],
                                  "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                                  "has_more": len(mine) > limit})

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._owned(self.batches, request)
        if batch is None:
            return _error(404, "not_found", "No such batch.")
        with self.server._lock:
            status = self._status(batch)
            if status in TERMINAL or status == "finalizing":
                return _error(409, "invalid_request_error", f"cannot cancel a batch that is {status}")
            if batch.cancelled is None:
                batch.cancelled = self._elapsed(batch)
        return web.json_response(self._batch_object(batch))

    # -- the clock --------------------------------------------------------------------------------
    def _elapsed(self, batch: _Batch) -> float:
        return (time.monotonic() - batch.created) * self.settings.time_scale

    def _latency(self, batch: _Batch) -> float:
        """Simulated seconds from in_progress to the last line: longer than the window for a batch that
        is to expire, so that `expired_done_share` of it is answered when the window ends."""
        s = self.settings
        if batch.ordinal in s.expire:
            return (s.window_s - s.validate_s) / max(1e-9, s.expired_done_share)
        return s.latency_s

    def _status(self, batch: _Batch) -> str:
        if batch.settled:
            return batch.settled
        s, elapsed = self.settings, self._elapsed(batch)
        if elapsed < s.validate_s and batch.cancelled is None:  # a batch cancelled while validating is cancelling
            return "validating"
        if batch.errors:
            return "failed"
        if batch.cancelled is not None:
            return "cancelling" if elapsed < batch.cancelled + s.finalize_s else "cancelled"
        done_at = s.validate_s + self._latency(batch)
        if done_at > s.window_s:
            return "in_progress" if elapsed < s.window_s else "expired"
        if elapsed < done_at:
            return "in_progress"
        return "finalizing" if elapsed < done_at + s.finalize_s else "completed"

    def _answered(self, batch: _Batch, at: float) -> int:
        """Lines answered `at` simulated seconds after creation (they finish evenly over the latency)."""
        share = (at - self.settings.validate_s) / self._latency(batch)
        return max(0, min(len(batch.requests), int(share * len(batch.requests))))

    def _batch_object(self, batch: _Batch) -> dict[str, Any]:
        with self.server._lock:
            status = self._status(batch)
            if status in TERMINAL and not batch.settled:
                self._settle(batch, status)
            live_done = self._answered(batch, self._elapsed(batch)) if status == "in_progress" else 0
        counts = batch.counts if batch.settled else {**batch.counts, "completed": live_done}
        stamp = batch.created_at
        return {"id": batch.id, "object": "batch", "endpoint": ENDPOINT, "input_file_id": batch.input_file_id,
                "completion_window": "24h", "status": status, "output_file_id": batch.output_file_id,
                "error_file_id": batch.error_file_id, "created_at": stamp,
                "expires_at": stamp + int(self.settings.window_s), "request_counts": counts,
                "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
                "metadata": batch.metadata}

    def _settle(self, batch: _Batch, status: str) -> None:
        """Write the output and error files of a batch that has just ended (lock held)."""
        batch.settled = status
        if status == "failed":
            return
        if status == "expired":
            done, missing = self._answered(batch, self.settings.window_s), "batch_expired"
        elif status == "cancelled":
            done, missing = self._answered(batch, batch.cancelled), "batch_cancelled"
        else:
            done, missing = len(batch.requests), ""
        stats = self.stats.setdefault(_label(batch.owner), BatchStats())
        outputs, errors = [], []
        for number, request in enumerate(batch.requests):
            line_id = f"batch_req_{batch.id[6:]}_{number}"
            if number >= done:
                errors.append({"id": line_id, "custom_id": request["custom_id"], "response": None,
                               "error": {"code": missing, "message": f"This request could not be executed ({missing})."}})
                stats.lines_failed[missing] += 1
                continue
            fault = self.server._draw_fault()
            if fault in ("error_5xx", "timeout"):
                errors.append({"id": line_id, "custom_id": request["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": line_id,
                    "body": {"error": {"message": "The server had an error (injected).", "type": "server_error",
                                       "code": "server_error"}}}})
                stats.lines_failed["server_error"] += 1
                continue
            outputs.append({"id": line_id, "custom_id": request["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": line_id,
                                         "body": self._completion(batch.model, request["body"], fault)}})
            stats.lines_answered += 1
            body = request["body"]
            self.paid[_call_id(batch.model, body.get("messages"), body.get("seed"))] += 1
        batch.counts = {"total": len(batch.requests), "completed": len(outputs), "failed": len(errors)}
        if outputs:
            batch.output_file_id = self._jsonl_file(batch, "output", outputs)
        if errors:
            batch.error_file_id = self._jsonl_file(batch, "errors", errors)

    def _completion(self, model: str, body: dict[str, Any], fault: str | None) -> dict[str, Any]:
        from soulray.offline.server import _cut

        messages, config = body.get("messages") or [], self.server.config
        prompt = messages[-1]["content"] if messages else ""
        completion, finish = self.server._rewrite(prompt, body.get("seed"), fault)
        budget = body.get("max_completion_tokens") or body.get("max_tokens") or config.default_max_tokens
        if config.count(completion) > budget:
            completion, finish = _cut(completion, budget, config.count), "length"
        prompt_tokens, completion_tokens = config.count_messages(messages), config.count(completion)
        return {"id": "chatcmpl-" + hashlib.sha256(f"{prompt}{body.get('seed')}".encode()).hexdigest()[:24],
                "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": completion},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _jsonl_file(self, batch: _Batch, kind: str, lines: list[dict[str, Any]]) -> str:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        file = _File(f"file-{next(self._ids):08d}", batch.owner, f"batch_{kind}", f"{batch.id}_{kind}.jsonl",
                     content, int(time.time()))
        self.files[file.id] = file
        return file.id

    # -- keys -------------------------------------------------------------------------------------
    def _owner(self, request: web.Request) -> str | None:
        """The calling key, or None if the server does not know it (401). Files and batches are the key's own."""
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return key if not self.server.config.keys or key in self.server.config.keys else None

    def _owned(self, table: dict[str, Any], request: web.Request) -> Any:
        item = table.get(request.match_info["id"])
        return item if item is not None and item.owner == self._owner(request) else None

    def summary(self) -> dict[str, Any]:
        """Per key label: batches created, validation failures, lines answered and failed, the highest queue."""
        with self.server._lock:
            return {label: {"created": s.created, "failed_validation": dict(s.failed_validation),
                            "lines_answered": s.lines_answered, "lines_failed": dict(s.lines_failed),
                            "max_queue": dict(s.max_queue), "largest_file": list(s.largest_file)}
                    for label, s in self.stats.items()}


def _label(key: str) -> str:
    from soulray.offline.server import _key_label

    return _key_label(key)


def _call_id(model: str, messages: object, seed: object) -> str:
    from soulray.offline.server import _call_id as call_id

    return call_id(model, messages, seed)


def _error(status: int, code: str, message: str) -> web.Response:
    from soulray.offline.server import _error as error

    return error(status, code, message)
