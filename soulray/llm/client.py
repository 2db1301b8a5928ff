"""One actor's way to an OpenAI-compatible API through the `openai` client: reservations from the
cluster-wide quota broker, retries, the response cache in front, the accounting, and the one re-ask
loop (`LLMCaller.ask`). The rewrite stage (soulray/rewrite/stage.py) and the evaluation's endpoint
models and judge (soulray/evaluate/llm.py) are its users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from soulray.errors import ConfigError
from soulray.fs import S3Config
from soulray.llm.broker import CallShape, Reservation
from soulray.llm.cache import ResponseCache, call_key
from soulray.llm.pricing import cost_of
from soulray.llm.settings import ApiKey, CallConfig
from soulray.llm.tokens import count_tokens, estimate_tokens
from soulray.redaction import install_log_redaction, redact
from soulray.runtime import NAMESPACE

log = logging.getLogger(__name__)

_NO_SECRET = "soulray-local-no-secret"
FLUSH_EVERY_S = 1.0
CALLS_PREFIX = "calls."  # the broker's tallies of calls per kind: calls.<kind>.<paid|cached|…_tokens|cost_usd>


@dataclass(frozen=True)
class LLMRun:
    """What the driver set up for this run: where the broker and the cache are, the endpoint."""

    broker_name: str
    cache_uri: str
    base_url: str
    s3: S3Config
    cache_index: Any = None  # ObjectRef of the CacheIndex the driver built (None: the actor builds one)
    # rewrite.mode batch: every answer is in the cache; an ObjectRef of {call_key: BatchFailure} for the
    # calls that ended without one (soulray/rewrite/batch.py). Nothing is called online then.
    batch_failures: Any = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    key: str
    cached: bool
    max_tokens: int | None = None  # the completion budget it was asked with (None: the configured cap)

    def after(self, cut: Completion) -> Completion:
        """This completion, paid for on top of `cut` (a completion cut by `length`, re-asked)."""
        return Completion(self.text, self.finish_reason, self.prompt_tokens + cut.prompt_tokens,
                          self.completion_tokens + cut.completion_tokens, self.cost_usd + cut.cost_usd, self.key,
                          self.cached, self.max_tokens)


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str


class Verdict(Protocol):
    """A parser's verdict on a completion: accepted, or the reason to ask again."""

    @property
    def ok(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def detail(self) -> str | None: ...


V = TypeVar("V", bound=Verdict)


@dataclass(frozen=True)
class Answer(Generic[V]):
    """What asking until a completion parses came to: the last completion's verdict, or the failure
    that ended it with no completion (`failure`); and what all its attempts cost together."""

    verdict: V | None = None
    failure: Failure | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    key: str | None = None  # the API key of the last completion

    def paid(self, completion: Completion, verdict: V) -> Answer[V]:
        return Answer(verdict, None, self.attempts + 1, self.prompt_tokens + completion.prompt_tokens,
                      self.completion_tokens + completion.completion_tokens, self.cost_usd + completion.cost_usd,
                      completion.key)


# the broker's stop messages → the reject reason of the rows it stops
_STOP_REASONS = (("budget", "budget_exhausted"), ("interrupted", "interrupted"))


def decoding_of(config: CallConfig) -> dict[str, Any]:
    """The decoding parameters every call sends (and its cache key holds), online or in a batch."""
    return {"temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens}


def batch_reason(code: str) -> str:
    """A reject reason from a batch line's error code: `batch_<code>` (budget stops keep their online name)."""
    return code if code == "budget_exhausted" or code.startswith("batch_") else f"batch_{code}"


def resolve_api_key(key: ApiKey) -> str:
    """The secret for `key`, read on this worker. Never logged, never returned to the driver."""
    if key.api_key_env:
        value = os.environ.get(key.api_key_env)
        if not value:
            raise ConfigError(f"rewrite.keys[{key.name}].api_key_env: {key.api_key_env} is not set on this node")
        return value
    if key.api_key_file:
        path = Path(key.api_key_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"rewrite.keys[{key.name}].api_key_file: {path} does not exist on this node")
        return path.read_text().strip()
    return _NO_SECRET


def _client(key: ApiKey, base_url: str, timeout_s: float):
    """The openai client for one key; retries are ours (through the broker), so the client's are off."""
    import openai

    if key.api_version:  # Azure OpenAI: deployments under the resource endpoint, `api-key` header
        return openai.AsyncAzureOpenAI(api_key=resolve_api_key(key), azure_endpoint=key.base_url,
                                       api_version=key.api_version, max_retries=0, timeout=timeout_s)
    return openai.AsyncOpenAI(api_key=resolve_api_key(key), base_url=key.base_url or base_url, max_retries=0,
                              timeout=timeout_s)


class BrokerLink:
    """One actor's calls to the quota broker, coalesced: the reservations its rows ask for within the
    same REQUEST_WINDOW_S travel in one `reserve_many` (granted in order, as one by one), settlements
    every SETTLE_WINDOW_S in one `settle_many`. One actor call per request and one per settlement cost
    the broker ~2 ms of CPU per call (~500 reservations a second on one core), coalesced ~0.1 ms
    (`python bench/broker.py`, issue 22)."""

    REQUEST_WINDOW_S = 0.005
    SETTLE_WINDOW_S = 0.02

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.requests: list[tuple[tuple[str, int, float, CallShape | None], asyncio.Future]] = []
        self.requesting: asyncio.Task | None = None
        self.settlements: list[tuple[int, dict[str, Any]]] = []
        self.settling: asyncio.Task | None = None

    async def reserve(self, model: str, tokens: int, cost: float, shape: CallShape | None) -> Reservation:
        future = asyncio.get_running_loop().create_future()
        self.requests.append(((model, tokens, cost, shape), future))
        if self.requesting is None or self.requesting.done():
            self.requesting = asyncio.ensure_future(self._send_requests())
        return await future

    async def _send_requests(self) -> None:
        # loop until the queue is empty: rows that ask while a call is in flight go in the next one
        while self.requests:
            await asyncio.sleep(self.REQUEST_WINDOW_S)
            pending, self.requests = self.requests, []
            try:
                grants = await self.broker.reserve_many.remote([request for request, _ in pending])
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiting row
                for _, future in pending:
                    future.set_exception(exc)
                continue
            for (_, future), grant in zip(pending, grants, strict=True):
                future.set_result(grant)

    def settle(self, reservation_id: int, outcome: dict[str, Any]) -> None:
        """Queue a settlement; they go to the broker together every SETTLE_WINDOW_S (and on `flush`)."""
        self.settlements.append((reservation_id, outcome))
        if self.settling is None or self.settling.done():
            self.settling = asyncio.ensure_future(self._send_settlements(delay_s=self.SETTLE_WINDOW_S))

    async def flush(self) -> None:
        """Return once the broker holds every settlement queued so far, those a delayed send had already
        taken too: returning while that send was in flight let a batch end (and its actor exit) before
        the broker had heard of its calls."""
        await self._send_settlements()
        if self.settling is not None and not self.settling.done():
            await self.settling

    async def _send_settlements(self, delay_s: float = 0.0) -> None:
        while self.settlements:  # as for requests: what arrives during a call goes in the next one
            if delay_s:
                await asyncio.sleep(delay_s)
            pending, self.settlements = self.settlements, []
            try:
                await self.broker.settle_many.remote(pending)
            except Exception:
                self.settlements[:0] = pending  # kept for the next send: a settlement is never dropped
                raise


class LLMCaller:
    """One actor's way to an OpenAI-compatible API: reservations from the cluster-wide quota broker,
    retries, the response cache (under `namespace`, a prompt or rubric version) and the accounting.
    The rewrite stage is one user (Rewriter); the evaluation's endpoint models and judge are others."""

    def __init__(self, *, config: CallConfig, run: LLMRun, namespace: str) -> None:
        import ray

        install_log_redaction()  # this worker's log lines, like the driver's
        self.config, self.run, self.namespace = config, run, namespace
        self.decoding = decoding_of(config)
        self.clients = {key.name: _client(key, run.base_url, config.timeout_s) for key in config.keys}
        self.broker = ray.get_actor(run.broker_name, namespace=NAMESPACE)
        index = ray.get(run.cache_index) if run.cache_index is not None else None
        self.cache = ResponseCache(run.cache_uri, namespace, s3=run.s3, index=index)
        self.batch_failures = ray.get(run.batch_failures) if run.batch_failures is not None else None
        self.flushed_at = time.monotonic()
        self.flushing: asyncio.Future | None = None
        self.unflushed = 0  # paid answers put in the cache since the last flush began
        self.semaphore = asyncio.Semaphore(config.concurrency_per_actor)
        self.stopped: Failure | None = None  # once the broker says stop, no row of this actor calls again
        self.link = BrokerLink(self.broker)
        self.calls: dict[str, float] = {}  # this batch's calls per kind, see _count

    async def finish_batch(self) -> None:
        """At the end of every batch: persist its paid completions, settle its reservations and send the
        batch's calls per kind to the broker's tallies."""
        await self._flush_cache(force=True)
        await self.link.flush()
        if self.calls:
            self.broker.tally.remote(self.calls)
            self.calls = {}

    def _count(self, kind: str, result: Completion | Failure) -> None:
        """Calls per kind (rewrite, persona, judge, revision, generate): the broker counts per key and
        model only. Tokens and cost are this run's spend, as the broker's: a cache hit counts as a call,
        at no cost."""
        if not isinstance(result, Completion):
            return
        name = f"{CALLS_PREFIX}{kind}."
        spent = (0, 0, 0.0) if result.cached else (result.prompt_tokens, result.completion_tokens, result.cost_usd)
        for field, value in (("cached" if result.cached else "paid", 1), *zip(
                ("prompt_tokens", "completion_tokens", "cost_usd"), spent, strict=True)):
            self.calls[name + field] = self.calls.get(name + field, 0) + value

    async def _flush_cache(self, *, force: bool = False) -> None:
        """Persist paid completions: every FLUSH_EVERY_S while calls complete (a killed job then loses
        only its last second of answers) and at the end of each batch. Writes run on a thread, one at a
        time, so the event loop keeps calling."""
        now = time.monotonic()
        if not force and (now - self.flushed_at < FLUSH_EVERY_S or not (self.flushing is None or self.flushing.done())):
            return
        if self.flushing is not None:
            await self.flushing  # one write at a time; raises if the last one failed
        self.flushed_at = now
        answers, self.unflushed = self.unflushed, 0
        self.flushing = asyncio.ensure_future(self._write(*self.cache.detach(), answers=answers))
        if force:
            await self.flushing

    async def _write(self, sequence: int, entries: dict[str, Any], *, answers: int) -> None:
        await asyncio.to_thread(self.cache.write, sequence, entries)
        if answers:  # the broker counts what is safe on disk: a stopping driver waits for every paid answer
            self.broker.persisted.remote(answers)

    async def ask(self, *, record_id: str, model: str, messages: list[dict[str, str]],
                  parse: Callable[[str, str], V], reasks: int, first_attempt: int = 0,
                  expected_chars: int = 0, kind: str = "rewrite") -> Answer[V]:
        """Complete `messages` until `parse(text, finish_reason)` accepts the completion, asking again
        (a new call: attempt numbers from `first_attempt` on, each with its own seed and cache entry)
        at most `reasks` times. Every attempt is paid and counted in the answer; a failed call ends it.
        Holds one of this actor's concurrency slots throughout."""
        answer: Answer[V] = Answer()
        async with self.semaphore:
            for reask in range(reasks + 1):
                result = await self.complete(record_id=record_id, model=model, messages=messages,
                                             attempt=first_attempt + reask, expected_chars=expected_chars,
                                             kind=kind)
                if isinstance(result, Failure):
                    return replace(answer, failure=result, attempts=answer.attempts + 1)
                answer = answer.paid(result, parse(result.text, result.finish_reason))
                if answer.verdict.ok:
                    break
        return answer

    async def complete(self, *, record_id: str, model: str, messages: list[dict[str, str]], attempt: int,
                       expected_chars: int, kind: str = "rewrite") -> Completion | Failure:
        """`_complete`, counted under `kind` (the calls per kind of the run's usage)."""
        result = await self._complete(record_id=record_id, model=model, messages=messages, attempt=attempt,
                                      expected_chars=expected_chars)
        self._count(kind, result)
        return result

    async def _complete(self, *, record_id: str, model: str, messages: list[dict[str, str]], attempt: int,
                        expected_chars: int) -> Completion | Failure:
        """One completion of `messages`: from the cache, or paid for under the broker's quotas (retried
        as configured). `attempt` numbers re-asks (each is a new call, with a new seed); `expected_chars`
        gives the prior guess of the completion's length (about 2 tokens a character, see
        estimate_tokens) that the broker's learned lengths scale.

        The broker sends a max_tokens learned from past completions; one cut by `length` under it is
        asked again with twice the budget (up to the configured cap) and counted by the broker
        (`cut_by_length`); the cut one's tokens are paid and stay in the totals. The cache key holds the
        configured cap, not the learned budget: max_tokens only cuts, so a completion that ended on its
        own is the same answer whatever budget it had."""
        key = call_key(messages, self.namespace, model, self.decoding, attempt)
        cached = self.cache.get(key)
        if cached is not None:
            return Completion(cached["completion"], cached["finish_reason"], cached["prompt_tokens"],
                              cached["completion_tokens"], cached["cost_usd"], cached["api_key_name"], cached=True)
        if self.batch_failures is not None:  # batch mode: what has no answer ended without one
            failure = self.batch_failures.get(key)
            return Failure(batch_reason(failure.code) if failure else "batch_unanswered",
                           failure.detail if failure else "no answer in the cache after the batches")
        cut: Completion | None = None
        while True:
            floor = min(self.config.max_tokens, 2 * cut.max_tokens) if cut is not None else 0
            result = await self._call(model, messages, seed=int(key[:8], 16), source_chars=expected_chars,
                                      min_max_tokens=floor)
            if isinstance(result, Completion) and cut is not None:
                result = result.after(cut)
            if not (isinstance(result, Completion) and result.finish_reason == "length"
                    and result.max_tokens is not None and result.max_tokens < self.config.max_tokens):
                break
            cut = result  # cut by our own budget, not by the cap: ask again with more room
        if isinstance(result, Failure):
            # the re-ask failed: the row still paid for the cut completion, which it parses as truncated
            # (not cached: a rerun asks again)
            return cut if cut is not None else result
        self.cache.put({"call_key": key, "record_id": record_id, "model": model,
                        "api_key_name": result.key, "completion": result.text,
                        "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens, "cost_usd": result.cost_usd})
        self.unflushed += 1
        # once stopping, every answer goes to disk as it arrives: the driver is waiting for them
        await self._flush_cache(force=self.stopped is not None and self.stopped.reason == "interrupted")
        return result

    async def _call(self, model: str, messages: list[dict[str, str]], *, seed: int, source_chars: int,
                    min_max_tokens: int = 0) -> Completion | Failure:
        prompt_tokens, completion_tokens = estimate_tokens(messages, source_chars, self.config.max_tokens)
        estimated = prompt_tokens + completion_tokens
        estimated_cost = cost_of(self.config.prices, model, prompt_tokens, completion_tokens)
        shape = CallShape(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          max_tokens=self.config.max_tokens, namespace=self.namespace, min_max_tokens=min_max_tokens)
        retries = 0
        while True:
            if self.stopped:
                return self.stopped
            reservation = await self.link.reserve(model, estimated, estimated_cost, shape)
            if reservation.stop:
                reason = next((reason for prefix, reason in _STOP_REASONS if reservation.stop.startswith(prefix)),
                              "no_usable_key")
                if self.stopped is None:  # rows waiting together all hear it: say it once
                    log.warning("calls for %s stopped: %s; remaining rows are rejected as %s", self.namespace,
                                reservation.stop, reason)
                    self.stopped = Failure(reason, reservation.stop)
                return self.stopped
            if reservation.id is None:
                await asyncio.sleep(reservation.wait_s)
                continue
            await asyncio.sleep(reservation.wait_s)
            outcome, result = await self._attempt(reservation, model, messages, seed)
            self.link.settle(reservation.id, outcome)
            if result is not None:
                return result
            if outcome["status"] in ("rate_limited", "insufficient_quota"):
                # the broker must hear of this 429 before this call asks again: queued settlements wait
                # up to 20 ms, a reservation 5 ms, so the retry would be granted straight back into the
                # burst (or the key without credit) it does not know about yet
                await self.link.flush()
            if outcome["status"] == "insufficient_quota":
                continue  # that key is now disabled; the broker hands out another
            retries += 1
            if retries > self.config.max_retries:
                return Failure("retries_exhausted", f"{self.config.max_retries} retries: last {outcome['status']}")
            if outcome["status"] != "rate_limited":  # 429s wait through the broker's cooldown instead
                await asyncio.sleep(min(30.0, 0.5 * 2 ** (retries - 1)) * random.uniform(0.5, 1.5))

    async def _attempt(self, reservation: Reservation, model: str, messages: list[dict[str, str]],
                       seed: int) -> tuple[dict[str, Any], Completion | Failure | None]:
        """One HTTP call. Returns the settlement for the broker and a result, or None to retry."""
        import openai

        client = self.clients[reservation.key]
        kwargs = {k: v for k, v in self.decoding.items() if v is not None}
        if reservation.max_tokens is not None:
            kwargs["max_tokens"] = reservation.max_tokens
        try:
            raw = await asyncio.wait_for(
                client.chat.completions.with_raw_response.create(model=model, messages=messages, seed=seed, **kwargs),
                timeout=self.config.timeout_s)
            response = raw.parse()
        except openai.RateLimitError as exc:
            if _error_code(exc) == "insufficient_quota":
                return {"status": "insufficient_quota"}, None
            return {"status": "rate_limited", "retry_after_s": _retry_after(exc.response.headers),
                    **_remaining(exc.response.headers)}, None
        except (asyncio.TimeoutError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError):
            return {"status": "error"}, None
        except openai.APIStatusError as exc:
            if exc.status_code in (408, 409):
                return {"status": "error"}, None
            return {"status": "error"}, Failure(f"http_{exc.status_code}", redact(str(exc.message))[:200])
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        cost = cost_of(self.config.prices, model, prompt_tokens, completion_tokens)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        finish_reason = (choice.finish_reason or "stop") if choice is not None else "stop"
        outcome = {"status": "ok", "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "cost_usd": cost, "own_completion_tokens": count_tokens(text), "finish_reason": finish_reason,
                   **_remaining(raw.headers)}
        return outcome, Completion(text, finish_reason, prompt_tokens, completion_tokens, cost, reservation.key,
                                   cached=False, max_tokens=reservation.max_tokens)


def _error_code(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return body.get("code") or (body.get("error") or {}).get("code")
    return None


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        try:
            return float(value) * scale if value is not None else None
        except ValueError:
            continue
    return None


def _remaining(headers: Any) -> dict[str, float]:
    """The x-ratelimit-* headers the broker learns from: what is left, and until when (a duration)."""
    found: dict[str, float] = {}
    for header, field in (("x-ratelimit-remaining-requests", "remaining_requests"),
                          ("x-ratelimit-remaining-tokens", "remaining_tokens")):
        value = headers.get(header)
        if value is not None and value.isdigit():
            found[field] = int(value)
    for header, field in (("x-ratelimit-reset-requests", "reset_requests_s"),
                          ("x-ratelimit-reset-tokens", "reset_tokens_s")):
        seconds = parse_duration(headers.get(header))
        if seconds is not None:
            found[field] = seconds
    return found


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """Seconds in an OpenAI (Go) duration string: "6m0s", "1.5s", "20ms", "1h2m3s"; a bare number is
    seconds. None if it is neither."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)
