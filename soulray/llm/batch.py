"""The Batch API backend (rewrite.mode: batch): the same completions as online, at the batch price, sent as
files of requests, tracked to the end and resumable.

`BatchDriver` is the submitter and tracker. It turns calls into request lines (custom_id = record id +
attempt), cuts them into input files (≤ max_requests_per_file, ≤ max_bytes_per_file), uploads each
(purpose batch) and creates its batch (24 h window) on the key with the most room in its queue: per key and
model, the prompt tokens of the batches still running never exceed `batch_queue_tokens`, so more is
submitted as batches finish, and several keys share the work. It polls with backoff, downloads the output
and error files of each batch that ends, puts every answer in the response cache, and settles the budget
(reserved at submission, at the estimated batch price) from the output's usage.

Everything it does is written to the batch journal (batch_journal.py) first, so it resumes: an uploaded
file whose batch may exist is matched against the provider's list before anything is created; a submitted
batch is polled, not sent again; a request whose answer is in the cache is never sent again. An expired,
cancelled or partly failed batch gives back only the requests without a result; they go into a later batch
until `max_retries`, then end with the provider's error code.

`rewrite_in_batches` (soulray/rewrite/batch.py) is the rewrite's use of it: every row's calls, through the
same parser and re-ask rules as online (a re-ask goes into a later batch); what it returns (the calls that
ended without an answer) lets the rewrite stage, run afterwards over the cache, reject those rows with
their reason. Nothing here knows of the rewrite: prices come in as a function (soulray/llm/pricing.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from soulray.errors import ConfigError
from soulray.llm.batch_journal import ANSWERED, REQUEUED, BatchEntry, BatchJournal
from soulray.llm.client import resolve_api_key
from soulray.llm.settings import ApiConfig, ApiKey, BatchModeConfig

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
QUEUE_FULL = "token_limit_exceeded"  # OpenAI's code for a batch over the enqueued-token limit


@dataclass(frozen=True)
class BatchCall:
    """One request: what it is in the cache (call_key) and in the file (custom_id), and what it costs ahead."""

    call_key: str
    custom_id: str
    model: str
    body: dict[str, Any]
    prompt_tokens: int  # estimated: what it holds of the key's queue
    reserved_usd: float  # estimated at the batch price


@dataclass(frozen=True)
class BatchFailure:
    code: str
    detail: str


Hook = Callable[[str, BatchEntry], None]


def custom_id(record_id: str, attempt: int) -> str:
    return f"{record_id}-{attempt}"


def record_of(custom: str) -> str:
    return custom.rsplit("-", 1)[0]


def request_line(call: BatchCall) -> bytes:
    """One line of an input file. The body is the online request's; no credential is ever in it."""
    line = {"custom_id": call.custom_id, "method": "POST", "url": ENDPOINT, "body": call.body}
    return (json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n").encode()


def take_file(calls: list[BatchCall], *, max_requests: int, max_bytes: int, max_tokens: int,
              max_usd: float | None) -> tuple[list[BatchCall], bytes]:
    """The longest prefix of `calls` that fits one input file and the room left (queue tokens, budget)."""
    taken, lines, size, tokens, cost = [], [], 0, 0, 0.0
    for call in calls:
        line = request_line(call)
        if (len(taken) == max_requests or size + len(line) > max_bytes or tokens + call.prompt_tokens > max_tokens
                or (max_usd is not None and cost + call.reserved_usd > max_usd)):
            break
        taken.append(call)
        lines.append(line)
        size, tokens, cost = size + len(line), tokens + call.prompt_tokens, cost + call.reserved_usd
    return taken, b"".join(lines)


def batch_client(key: ApiKey, base_url: str, timeout_s: float = 120.0):
    """A synchronous openai client for the batch calls of one key (the driver runs them one at a time);
    the client's own retries cover a failed upload or poll: none of these calls is paid."""
    import openai

    return openai.OpenAI(api_key=resolve_api_key(key), base_url=key.base_url or base_url, max_retries=5,
                         timeout=timeout_s)


class BatchDriver:
    def __init__(self, *, keys: list[ApiKey], base_url: str, settings: BatchModeConfig, journal: BatchJournal,
                 cache: Any, price: Callable[[str, int, int], float], budget_usd: float | None = None,
                 hook: Hook | None = None, clients: dict[str, Any] | None = None) -> None:
        self.keys = {key.name: key for key in keys}
        self.settings, self.journal, self.cache, self.price = settings, journal, cache, price
        self.budget_usd, self.hook = budget_usd, hook
        self.clients = clients or {key.name: batch_client(key, base_url) for key in keys}
        self.entries: dict[str, BatchEntry] = {}
        self.flying: dict[str, str] = {}  # call_key → entry id, for the requests of live entries
        self.failures: dict[str, list[str]] = defaultdict(list)  # call_key → error codes, oldest first
        self.final: dict[str, BatchFailure] = {}  # calls that will not be sent again
        self.shrink: dict[tuple[str, str], float] = {}  # (key, model) → share of the limit the provider took
        self.saved_calls = 0  # answers downloaded this run and flushed to the cache (a stop signal reports them)
        self._collecting = threading.Lock()  # a stop signal's drain reads the counts on another thread
        self.spent_usd = 0.0  # settled this run (the manifest's cost; the budget, as online, is per run)
        self.poll_s = settings.poll_s
        self.stats: dict[str, Counter] = defaultdict(Counter, {name: Counter() for name in self.keys})
        self.models: dict[str, Counter] = defaultdict(Counter)
        for entry in journal.load():
            self._adopt(entry)

    # -- what the caller sees ---------------------------------------------------------------------
    def is_flying(self, call_key: str) -> bool:
        return call_key in self.flying

    def final_failure(self, call_key: str) -> BatchFailure | None:
        return self.final.get(call_key)

    @property
    def live(self) -> int:
        return sum(entry.state != "done" for entry in self.entries.values())

    @property
    def paid_calls(self) -> int:
        """Answers downloaded this run (each flushed to the cache before the journal records its batch done)."""
        return int(sum(stats["ok"] for stats in self.stats.values()))

    @property
    def reserved_usd(self) -> float:
        return sum(entry.reserved_usd for entry in self.entries.values() if entry.state != "done")

    def step(self, wanted: Iterable[BatchCall]) -> list[tuple[str, dict[str, Any]]]:
        """Send what fits of `wanted` (calls neither answered nor in flight), poll the live batches once,
        collect the ones that ended. Returns the answers collected (call_key, cache entry)."""
        sent = self._submit([call for call in wanted if call.call_key not in self.flying])
        answers, changed = self._poll()
        self.poll_s = self.settings.poll_s if (sent or changed) else min(self.settings.poll_max_s, self.poll_s * 1.5)
        return answers

    def wait(self) -> None:
        time.sleep(self.poll_s)

    # -- resuming ---------------------------------------------------------------------------------
    def _adopt(self, entry: BatchEntry) -> None:
        """An entry of the journal (an earlier run's, or this run's killed driver's)."""
        if entry.state == "planned":  # nothing was sent, or only a file: its requests go out again
            self.journal.delete(entry)
            return
        self.entries[entry.entry_id] = entry
        if entry.state == "done":  # paid by the run that downloaded it: not this run's spend
            self._count_results(entry)
            return
        if entry.key not in self.clients:
            raise ConfigError(f"batch {entry.batch_id or entry.file_id} (journal entry {entry.entry_id}) was sent with "
                              f"key {entry.key!r}, which rewrite.keys no longer names: add it back until its batches end")
        for call_key in entry.requests.values():
            self.flying[call_key] = entry.entry_id
        if entry.state == "uploaded":  # the batch may exist: only the provider knows
            existing = self._find_batch(entry)
            if existing is not None:
                log.info("batch journal: %s was created before the driver stopped; resuming it", existing.id)
                self._created(entry, existing)
            else:
                self._create(entry)

    def _find_batch(self, entry: BatchEntry) -> Any:
        for batch in self.clients[entry.key].batches.list(limit=100):
            if batch.input_file_id == entry.file_id:
                return batch
            if batch.created_at < entry.created_at - 3600:  # newest first: older ones cannot be it
                return None
        return None

    # -- submitting -------------------------------------------------------------------------------
    def _submit(self, calls: list[BatchCall]) -> int:
        """Send as many files as the queues and the budget allow. Calls that no key could ever take
        (larger than every queue, or over the budget with nothing left to settle) become final failures."""
        sent = 0
        by_model: dict[str, list[BatchCall]] = defaultdict(list)
        for call in calls:
            by_model[call.model].append(call)
        for model, group in by_model.items():
            # the keys share the work: no file takes more than its key's share of what waits
            share = -(-len(group) // max(1, len(self._keys_for(model))))
            while group:
                key, room = self._roomiest(model)
                money = None if self.budget_usd is None else self.budget_usd - self.spent_usd - self.reserved_usd
                taken, content = take_file(group, max_requests=min(share, self.settings.max_requests_per_file),
                                           max_bytes=self.settings.max_bytes_per_file, max_tokens=room,
                                           max_usd=money)
                if not taken:
                    break
                self._send(key, model, taken, content)
                sent += 1
                group = group[len(taken):]
            if group and not any(e.model == model and e.state != "done" for e in self.entries.values()):
                self._refuse(model, group)  # nothing will finish to make room: these can never go
        return sent

    def _refuse(self, model: str, calls: list[BatchCall]) -> None:
        over_budget = self.budget_usd is not None and (self.budget_usd - self.spent_usd < calls[0].reserved_usd)
        largest = max((self._limit(name, model) for name in self._keys_for(model)), default=0)
        for call in calls:
            if over_budget:
                self.final[call.call_key] = BatchFailure("budget_exhausted", f"budget ${self.budget_usd} reached")
            elif call.prompt_tokens > largest:
                self.final[call.call_key] = BatchFailure(
                    "batch_queue_too_small", f"{call.prompt_tokens} prompt tokens exceed every key's queue for {model}")

    def _keys_for(self, model: str) -> list[str]:
        return [name for name, key in self.keys.items() if key.models is None or model in key.models]

    def _limit(self, name: str, model: str) -> int:
        key = self.keys[name]
        limits = key.model_limits.get(model)
        limit = limits.batch_queue_tokens if limits is not None and limits.batch_queue_tokens else key.batch_queue_tokens
        return int(limit * self.shrink.get((name, model), 1.0))

    def _roomiest(self, model: str) -> tuple[str, int]:
        """The key with the most room in its queue for `model`, and that room (prompt tokens)."""
        rooms = []
        for name in self._keys_for(model):
            enqueued = sum(e.prompt_tokens for e in self.entries.values()
                           if e.key == name and e.model == model and e.state != "done")
            rooms.append((self._limit(name, model) - enqueued, name))
        room, name = max(rooms, default=(0, ""))
        return name, max(0, room)

    def _send(self, key: str, model: str, calls: list[BatchCall], content: bytes) -> None:
        entry = BatchEntry.new(key=key, model=model, requests={call.custom_id: call.call_key for call in calls},
                               prompt_tokens=sum(call.prompt_tokens for call in calls),
                               reserved_usd=sum(call.reserved_usd for call in calls))
        self.journal.save(entry)  # planned: a crash now leaves at most an orphan file, never a batch
        self.entries[entry.entry_id] = entry
        for call in calls:
            self.flying[call.call_key] = entry.entry_id
        file = self.clients[key].files.create(file=(f"{entry.entry_id}.jsonl", content), purpose="batch")
        entry.file_id, entry.state = file.id, "uploaded"
        self.journal.save(entry)
        self._fire("uploaded", entry)
        self._create(entry)
        log.info("batch %s: %d requests, %d prompt tokens on key %s for %s", entry.batch_id, len(calls),
                 entry.prompt_tokens, key, model)

    def _create(self, entry: BatchEntry) -> None:
        batch = self.clients[entry.key].batches.create(
            input_file_id=entry.file_id, endpoint=ENDPOINT, completion_window="24h",
            metadata={"soulray_entry": entry.entry_id})
        self._created(entry, batch)

    def _created(self, entry: BatchEntry, batch: Any) -> None:
        entry.batch_id, entry.status, entry.state = batch.id, batch.status, "submitted"
        self.journal.save(entry)
        self.stats[entry.key]["batches"] += 1
        self._fire("created", entry)

    # -- tracking ---------------------------------------------------------------------------------
    def _poll(self) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        answers, changed = [], False
        for entry in [e for e in self.entries.values() if e.state == "submitted"]:
            batch = self.clients[entry.key].batches.retrieve(entry.batch_id)
            if batch.status != entry.status:
                entry.status, changed = batch.status, True
                self.journal.save(entry)
            self._fire("polled", entry)
            if batch.status in TERMINAL:
                answers.extend(self._collect(entry, batch))
        return answers, changed

    def stopped(self, wait_s: float = 60.0) -> tuple[int, int, int]:
        """(answers downloaded this run, of them flushed to the cache, batches not yet collected), read on a
        stop signal's drain thread while the main thread may be halfway through a batch's download: waits
        for that batch to be flushed and journalled, so the two counts agree."""
        locked = self._collecting.acquire(timeout=wait_s)
        try:
            return self.paid_calls, self.saved_calls, self.live
        finally:
            if locked:
                self._collecting.release()

    def _collect(self, entry: BatchEntry, batch: Any) -> list[tuple[str, dict[str, Any]]]:
        with self._collecting:
            return self._download(entry, batch)

    def _download(self, entry: BatchEntry, batch: Any) -> list[tuple[str, dict[str, Any]]]:
        """Download an ended batch's output and error files; answers into the cache, then the entry done."""
        client, results, answers, cost, new = self.clients[entry.key], {}, [], 0.0, 0
        if batch.status == "failed":
            errors = (batch.errors.data if batch.errors and batch.errors.data else None) or []
            code = (errors[0].code if errors else None) or "batch_failed"
            if code == QUEUE_FULL:  # the provider counts tokens its own way: leave it more room from now on
                self.shrink[(entry.key, entry.model)] = 0.8 * self.shrink.get((entry.key, entry.model), 1.0)
                log.warning("batch %s refused: %s's queue for %s is full as the provider counts it; sending its "
                            "requests again with 20%% more room", batch.id, entry.key, entry.model)
            results = {custom: REQUEUED if code == QUEUE_FULL else code for custom in entry.requests}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                custom = item["custom_id"]
                answer = _answer(item, entry)
                if answer is None:
                    results[custom] = _error_code(item)
                    continue
                results[custom] = ANSWERED
                call_key = entry.requests[custom]
                answer.update(call_key=call_key, record_id=record_of(custom),
                              cost_usd=self.price(entry.model, answer["prompt_tokens"], answer["completion_tokens"]))
                if self.cache.get(call_key) is None:  # downloaded again after a kill: paid once, counted once
                    self.cache.put(answer)
                    cost += answer["cost_usd"]
                    new += 1
                    self._count_answer(entry, answer)
                answers.append((call_key, answer))
        for custom in entry.requests:
            results.setdefault(custom, "missing_from_output")
        self.cache.flush()  # the answers are safe before the journal says so
        self.saved_calls += new
        entry.results, entry.cost_usd, entry.state = results, cost, "done"
        entry.output_file_id, entry.error_file_id = batch.output_file_id, batch.error_file_id
        self.journal.save(entry)
        self.spent_usd += cost
        self._count_results(entry)
        outcome = Counter(result for result in results.values())
        log.info("batch %s %s: %s; $%.4f, %d batches still running", entry.batch_id, batch.status,
                 ", ".join(f"{n} {result}" for result, n in outcome.most_common()), cost, self.live)
        self._fire("downloaded", entry)
        return answers

    def _count_results(self, entry: BatchEntry) -> None:
        for custom, result in entry.results.items():
            call_key = entry.requests[custom]
            if self.flying.get(call_key) == entry.entry_id:
                del self.flying[call_key]
            if result in (ANSWERED, REQUEUED):
                continue
            self.failures[call_key].append(result)
            self.stats[entry.key]["errors"] += 1
            retries = len(self.failures[call_key]) - 1
            if retries >= self.settings.max_retries or result in _FINAL_CODES or result.startswith("http_4"):
                self.final[call_key] = BatchFailure(result, f"{len(self.failures[call_key])} batch attempts: "
                                                            f"{', '.join(self.failures[call_key])}")

    def _count_answer(self, entry: BatchEntry, answer: dict[str, Any]) -> None:
        for stats in (self.stats[entry.key], self.models[entry.model]):
            stats["requests"] += 1
            stats["ok"] += 1
            stats["prompt_tokens"] += answer["prompt_tokens"]
            stats["completion_tokens"] += answer["completion_tokens"]
            stats["cost_usd"] += answer["cost_usd"]

    def _fire(self, phase: str, entry: BatchEntry) -> None:
        if self.hook is not None:
            self.hook(phase, entry)

    def usage(self) -> dict[str, Any]:
        """Calls, tokens and spend of the answers this driver downloaded, per key and per model, in the
        shape of the broker's snapshot; plus the batches."""
        fields = ("requests", "ok", "rate_limited", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
        entries = list(self.entries.values())
        return {"keys": {name: {field: stats[field] for field in fields} for name, stats in self.stats.items()},
                "models": {model: {field: stats[field] for field in fields} for model, stats in self.models.items()},
                "batches": {"entries": len(entries), "done": sum(e.state == "done" for e in entries),
                            "statuses": dict(Counter(e.status for e in entries)),
                            "requeued": sum(r == REQUEUED for e in entries for r in e.results.values()),
                            "failed_lines": sum(len(codes) for codes in self.failures.values()),
                            "spent_usd": self.spent_usd}}


# a line that failed this way (or with any 4xx status) will fail the same way again: no retry
_FINAL_CODES = ("invalid_request_error", "invalid_api_key", "model_not_found", "context_length_exceeded")


def _answer(item: dict[str, Any], entry: BatchEntry) -> dict[str, Any] | None:
    """The cache entry of an output line, or None if the line failed."""
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        return None
    body = response.get("body") or {}
    choice = (body.get("choices") or [{}])[0]
    usage = body.get("usage") or {}
    return {"model": entry.model, "api_key_name": entry.key,
            "completion": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason") or "stop", "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0))}


def _error_code(item: dict[str, Any]) -> str:
    error = item.get("error") or {}
    response = item.get("response") or {}
    body_error = (response.get("body") or {}).get("error") or {}
    return error.get("code") or body_error.get("code") or f"http_{response.get('status_code', 'unknown')}"


def inspect_batches(*, config: ApiConfig, journal: BatchJournal, refresh: bool = False,
                    cancel: bool = False) -> list[BatchEntry]:
    """`soulray batches`: a dataset's batches from its journal; with `refresh` their status asked of the
    provider, with `cancel` every live one cancelled (a later run collects what they answered, and sends
    the rest again)."""
    entries = journal.load()
    live = [entry for entry in entries if entry.state == "submitted" and entry.status not in TERMINAL]
    if not (refresh or cancel) or not live:
        return entries
    keys = {key.name: key for key in config.keys}
    clients = {name: batch_client(keys[name], config.base_url) for name in {entry.key for entry in live}}
    for entry in live:
        client = clients[entry.key]
        batch = client.batches.retrieve(entry.batch_id)
        if cancel and batch.status in ("validating", "in_progress"):
            batch = client.batches.cancel(entry.batch_id)
            log.info("cancelled %s (%d requests)", entry.batch_id, len(entry.requests))
        if batch.status != entry.status:
            entry.status = batch.status
            journal.save(entry)
    return entries
