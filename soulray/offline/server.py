"""`soulray serve-llm`: a local OpenAI-compatible server for dry runs, demos and tests. NOT a model.

It implements `/v1/chat/completions` and `/v1/models` well enough for the real `openai` client, and
"rewrites" deterministically without any model: it reads the source block of the prompt, splits the
answer into sentences and lays them out as a multi-turn dialogue in the prompt's role labels. Requests
that are not rewrites get the evaluation's offline answers (judge ratings, next counselor turns; see
soulray/offline/evaluation.py), as deterministic and as model-free. What it
simulates faithfully is the behaviour of real APIs that soulray must cope with: per-key requests- and
tokens-per-minute limits (429 + Retry-After + x-ratelimit-* headers), bursts of 429 whatever the pacing,
latency, 5xx errors, timeouts, malformed, truncated and refused completions, and keys without quota
(`insufficient_quota`); and the ways a real provider's limiter differs from the client's own view
(DESIGN.md, "How real providers behave"): it counts tokens its own way (`token_counting`), may charge a
request at admission by its max_tokens (`charge`), may enforce a minute's limit in short slices
(`quantum_s`), cuts a completion at max_tokens (finish_reason `length`), and sends its reset headers as
duration strings ("6m0s", "1s", "20ms").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from soulray.llm.tokens import MESSAGE_OVERHEAD, count_message_tokens, count_tokens
from soulray.offline.batches import BatchService, BatchSettings
from soulray.offline.evaluation import is_judge_prompt, offline_evaluation
from soulray.offline.gate import is_gate_prompt, offline_gate
from soulray.rewrite.prompts import CLOSE, OPEN


@dataclass
class SimulatedKey:
    rpm: int = 10_000
    tpm: int = 10_000_000
    insufficient_quota: bool = False
    # models limited separately on this key, as OpenAI does (others share the limits above)
    models: dict[str, SimulatedKey] = field(default_factory=dict)

    def lane(self, model: str) -> tuple[str, SimulatedKey]:
        return (model, self.models[model]) if model in self.models else ("*", self)


@dataclass
class Faults:
    """Probabilities per request (drawn from a seeded RNG, in arrival order)."""

    error_5xx: float = 0.0
    timeout: float = 0.0
    malformed: float = 0.0
    truncated: float = 0.0
    refusal: float = 0.0
    trailing_client: float = 0.0  # a good dialogue, then the client's thanks (as real models often end)
    hang_s: float = 30.0  # how long a "timeout" request hangs before answering 504
    # Bursts of 429: the provider refuses a key for a while however well it was paced (its own load,
    # an organisation-wide limit the client cannot see). A key's burst starts at its `burst_every`-th
    # request since its last burst and lasts `burst_s`; every request of that key inside gets 429.
    # Whether a burst's 429s carry Retry-After (the time left in the burst, as OpenAI sends it) or no
    # header at all (as some gateways and proxies answer) is `burst_retry_after`, cycled over the bursts
    # of all keys in the order they start.
    # Counted in requests, not drawn, so a test knows how many bursts a run of N calls meets.
    burst_every: int = 0  # 0: no bursts
    burst_s: float = 1.0
    burst_retry_after: tuple[bool, ...] = (True, False)


@dataclass
class Burst:
    """One burst of 429s on one key, and the calls it refused (each by `call_id`: a retry of a call
    sends the same messages and seed, so a call refused twice in one burst shows up here twice)."""

    started: float
    until: float
    retry_after: bool
    refused: list[str] = field(default_factory=list)

    def retry_headers(self, now: float) -> dict[str, str]:
        if not self.retry_after:
            return {}
        left = max(self.until - now, 0.001)  # rounded up: a client that honours it lands after the burst
        return {"Retry-After": str(math.ceil(left)), "retry-after-ms": str(math.ceil(left * 1000))}


@dataclass
class KeyStats:
    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    log: list[tuple[float, int, str]] = field(default_factory=list)  # (time, tokens, lane) of every admission
    refused_at: list[float] = field(default_factory=list)  # when each 429 for rate (limits or bursts) was sent
    budgets: list[int | None] = field(default_factory=list)  # each request's max_tokens, in arrival order
    bursts: list[Burst] = field(default_factory=list)
    since_burst: int = 0  # requests since the last burst ended

    def burst_at(self, now: float, faults: Faults, *, started_before: int) -> Burst | None:
        """The burst this request falls in, starting one if it is the `burst_every`-th since the last
        (`started_before`: bursts of all keys so far, for the Retry-After cycle)."""
        if self.bursts and now < self.bursts[-1].until:
            return self.bursts[-1]
        if not faults.burst_every:
            return None
        self.since_burst += 1
        if self.since_burst < faults.burst_every:
            return None
        self.since_burst = 0
        cycle = faults.burst_retry_after
        burst = Burst(started=now, until=now + faults.burst_s, retry_after=cycle[started_before % len(cycle)])
        self.bursts.append(burst)
        return burst

    def max_in_window(self, window_s: float = 60.0, lane: str | None = None) -> tuple[int, int]:
        """The most requests and tokens served inside any window of `window_s` (for quota checks), on
        one lane (a separately limited model, or "*") or on the whole key."""
        log = [(moment, used) for moment, used, name in self.log if lane is None or name == lane]
        best_requests = best_tokens = 0
        start, tokens = 0, 0
        for end, (moment, used) in enumerate(log):
            tokens += used
            while log[start][0] <= moment - window_s:
                tokens -= log[start][1]
                start += 1
            best_requests, best_tokens = max(best_requests, end - start + 1), max(best_tokens, tokens)
        return best_requests, best_tokens


CHARGES = ("actual", "max_tokens")


@dataclass
class ServerConfig:
    keys: dict[str, SimulatedKey] = field(default_factory=dict)  # api key value → limits; empty: any key, default limits
    default_limits: SimulatedKey = field(default_factory=SimulatedKey)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    models: tuple[str, ...] = ("gpt-3.5-turbo", "gpt-4", "gpt-4o-mini", "deepseek-chat")
    # How this provider counts tokens (usage and limits): "ours" (soulray/llm/tokens.py, what the
    # client estimates with), "characters" (one a character), or a number: that many times ours (real
    # tokenizers run ~0.7-2 tokens a Chinese character by model).
    token_counting: str | float = "ours"
    # What a request costs at admission: "actual" (prompt + completion, known here before the latency),
    # or "max_tokens": OpenAI's rule, max(max_tokens, prompt) up front, settled to the actual count when
    # the completion is done.
    charge: str = "actual"
    # 60: each limit is a sliding 60 s window. Less: the minute's limit is enforced in slices of this
    # many seconds (60,000 RPM as 1,000 per second), as a bucket of limit × quantum_s / 60 refilled at
    # limit / 60 per second; a request larger than the bucket is admitted only when the bucket is full
    # and leaves it in debt (a provider enforcing per second still serves a 5,000-token request under
    # 100k TPM).
    quantum_s: float = 60.0
    default_max_tokens: int = 4096  # the completion budget of a request that names none
    batch: BatchSettings = field(default_factory=BatchSettings)  # /v1/files and /v1/batches (offline/batches.py)

    def __post_init__(self) -> None:
        counting = self.token_counting
        if not (counting in ("ours", "characters") or (isinstance(counting, (int, float)) and counting > 0)):
            raise ValueError(f"token_counting: 'ours', 'characters' or a positive ratio, not {counting!r}")
        if self.charge not in CHARGES:
            raise ValueError(f"charge: one of {CHARGES}, not {self.charge!r}")
        if not 0 < self.quantum_s <= 60:
            raise ValueError(f"quantum_s: in (0, 60], not {self.quantum_s}")

    def count(self, text: str) -> int:
        """Tokens in `text` as this provider counts them."""
        if self.token_counting == "characters":
            return len(text)
        ours = count_tokens(text)
        return ours if self.token_counting == "ours" else math.ceil(ours * float(self.token_counting))

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """The prompt's tokens: each message's content plus the chat framing, as tokens.py frames them."""
        if self.token_counting == "ours":
            return count_message_tokens(messages)
        return sum(self.count(m.get("content") or "") + MESSAGE_OVERHEAD for m in messages) + 3

    def limiter(self) -> _Window | _Slices:
        return _Window() if self.quantum_s >= 60 else _Slices(self.quantum_s)


class _Window:
    """Requests and tokens admitted in the last 60 s for one key. The token sum is kept as events enter
    and leave, so a request costs O(1) however many the window holds (summing the window per request
    made the server the bottleneck of a 250 requests/s benchmark: 15,000 events a sum)."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def trim(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - 60.0:
            self.tokens -= self.events.popleft()[1]

    def admit(self, now: float, tokens: int, limits: SimulatedKey) -> float:
        """0 if admitted (and recorded), else seconds until it would be."""
        self.trim(now)
        if len(self.events) >= limits.rpm:
            return self.events[0][0] + 60.0 - now
        if self.tokens + tokens > limits.tpm:
            freed, wait = self.tokens + tokens - limits.tpm, 0.0
            for moment, spent in self.events:
                freed -= spent
                wait = moment + 60.0 - now
                if freed <= 0:
                    break
            return max(wait, 0.001)
        self.events.append((now, tokens))
        self.tokens += tokens
        return 0.0

    def settle(self, admitted_at: float, charged: int, actual: int) -> None:
        """The request admitted at `admitted_at` for `charged` tokens really cost `actual` (if it is still
        in the window: the newest events are searched first, where a request just answered sits)."""
        for index in range(len(self.events) - 1, -1, -1):
            moment, tokens = self.events[index]
            if moment < admitted_at:
                return
            if moment == admitted_at and tokens == charged:
                self.events[index] = (moment, actual)
                self.tokens += actual - charged
                return

    def headers(self, limits: SimulatedKey, now: float) -> dict[str, str]:
        """Remaining = what the window has left; reset = until the window is empty again (the newest
        event leaves), as a duration string."""
        self.trim(now)
        reset = (self.events[-1][0] + 60.0 - now) if self.events else 0.0
        return _headers(limits, remaining_requests=max(0, limits.rpm - len(self.events)),
                        remaining_tokens=max(0, limits.tpm - self.tokens), reset_requests_s=reset, reset_tokens_s=reset)


class _Slices:
    """A key's limits enforced in slices of `quantum_s` (ServerConfig.quantum_s): one bucket for requests,
    one for tokens, each holding a slice's share of the minute's limit and refilled continuously."""

    def __init__(self, quantum_s: float) -> None:
        self.quantum_s = quantum_s
        self.requests: float | None = None  # levels; None until the first request sets them full
        self.tokens: float | None = None
        self.updated = 0.0

    def _refill(self, now: float, limits: SimulatedKey) -> tuple[float, float]:
        request_cap, token_cap = limits.rpm * self.quantum_s / 60, limits.tpm * self.quantum_s / 60
        if self.requests is None:
            self.requests, self.tokens = request_cap, token_cap
        elapsed = max(0.0, now - self.updated)
        self.requests = min(request_cap, self.requests + elapsed * limits.rpm / 60)
        self.tokens = min(token_cap, self.tokens + elapsed * limits.tpm / 60)
        self.updated = now
        return request_cap, token_cap

    def admit(self, now: float, tokens: int, limits: SimulatedKey) -> float:
        request_cap, token_cap = self._refill(now, limits)
        need_requests, need_tokens = min(1.0, request_cap), min(float(tokens), token_cap)
        wait = max((need_requests - self.requests) / (limits.rpm / 60), (need_tokens - self.tokens) / (limits.tpm / 60))
        if wait > 1e-9:
            return wait
        self.requests -= 1
        self.tokens -= tokens
        return 0.0

    def settle(self, admitted_at: float, charged: int, actual: int) -> None:
        if self.tokens is not None:
            self.tokens += charged - actual  # a refund is capped by the next refill, a surcharge is debt

    def headers(self, limits: SimulatedKey, now: float) -> dict[str, str]:
        """Remaining = what the buckets hold; reset = until they are full again."""
        request_cap, token_cap = self._refill(now, limits)
        return _headers(limits, remaining_requests=int(max(0.0, self.requests)),
                        remaining_tokens=int(max(0.0, self.tokens)),
                        reset_requests_s=(request_cap - self.requests) / (limits.rpm / 60),
                        reset_tokens_s=(token_cap - self.tokens) / (limits.tpm / 60))


@dataclass
class Answer:
    """The limiter's decision on one request and what the request gets (LocalLLMServer.admit)."""

    at: float
    wait_s: float  # 0: admitted; else refused, admitted in this many seconds
    burst: Burst | None  # refused by an injected burst
    headers: dict[str, str]
    completion: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    charged: int  # what the limiter charged at admission
    limiter: _Window | _Slices


class LocalLLMServer:
    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.stats: dict[str, KeyStats] = {}
        self._windows: dict[tuple[str, str], _Window | _Slices] = {}  # (key, lane)
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.batches = BatchService(self, self.config.batch)

    # -- HTTP -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure_chat)
        app.router.add_get("/stats", self._stats)
        self.batches.mount(app)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "soulray-local"} for model in self.config.models]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_summary())

    def stats_summary(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {_key_label(key): {"requests": s.requests, "completed": s.completed, "rate_limited": s.rate_limited,
                                      "errors": s.errors, "prompt_tokens": s.prompt_tokens,
                                      "completion_tokens": s.completion_tokens,
                                      "bursts": len(s.bursts), "burst_429": sum(len(b.refused) for b in s.bursts),
                                      "busiest_minute": _busiest(s), "lanes": {
                                          lane: _busiest(s, lane) for lane in sorted({name for _, _, name in s.log})}}
                    for key, s in self.stats.items()}

    async def _chat(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return await self._complete(request, key, model=None)

    async def _azure_chat(self, request: web.Request) -> web.Response:
        """Azure OpenAI's shape: the model is the deployment in the path, the key an `api-key` header, and
        an api-version query parameter is required."""
        if not request.query.get("api-version"):
            return _error(404, "404", "Resource not found (missing api-version).")
        return await self._complete(request, request.headers.get("api-key", "").strip(),
                                    model=request.match_info["deployment"])

    async def _complete(self, request: web.Request, key: str, *, model: str | None) -> web.Response:
        limits = self.config.keys.get(key) if self.config.keys else self.config.default_limits
        if limits is None:
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        try:
            body = await request.json()
            messages, model = body["messages"], model or body.get("model", "gpt-3.5-turbo")
        except (json.JSONDecodeError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "Expected a JSON body with messages.")
        with self._lock:
            stats = self.stats.setdefault(key, KeyStats())
            stats.requests += 1
            fault = self._draw_fault()
        if limits.insufficient_quota:  # a key's credit is the key's, whatever the model
            with self._lock:
                stats.errors += 1
            return _error(429, "insufficient_quota", "You exceeded your current quota, please check your plan.")
        answer = self.admit(key, model, messages, max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                            seed=body.get("seed"), fault=fault)
        if answer.burst:
            return _error(429, "rate_limit_exceeded", "Rate limit reached (injected burst).",
                          {**answer.headers, **answer.burst.retry_headers(answer.at)})
        if answer.wait_s:
            retry = {"Retry-After": str(max(1, math.ceil(answer.wait_s))),
                     "retry-after-ms": str(max(1, math.ceil(answer.wait_s * 1000)))}
            return _error(429, "rate_limit_exceeded", "Rate limit reached.", {**answer.headers, **retry})
        low, high = self.config.latency_ms
        if high > 0:
            await asyncio.sleep(self._uniform(low, high) / 1000)
        self.finish(answer)
        headers = answer.headers
        if fault == "error_5xx":
            with self._lock:
                stats.errors += 1
            return _error(503, "server_error", "The server is overloaded (injected).", headers)
        if fault == "timeout":
            await asyncio.sleep(self.config.faults.hang_s)
            return _error(504, "timeout", "Gateway timeout (injected).", headers)
        with self._lock:
            stats.completed += 1
            stats.prompt_tokens += answer.prompt_tokens
            stats.completion_tokens += answer.completion_tokens
        prompt = messages[-1]["content"] if messages else ""
        return web.json_response({
            "id": "chatcmpl-" + hashlib.sha256(f"{prompt}{body.get('seed')}".encode()).hexdigest()[:24],
            "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.completion},
                         "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        }, headers=headers)

    def admit(self, key: str, model: str, messages: list[dict[str, str]], *, max_tokens: int | None, seed: object,
              fault: str | None = None, now: float | None = None) -> Answer:
        """The limiter's decision on one request of `key` (admitted, or refused with a wait), with the
        completion it would get and its token counts as this provider counts them. The HTTP handler
        uses it; a simulation in tests calls it with its own clock (then `finish` when the completion
        is done)."""
        limits = self.config.keys.get(key) if self.config.keys else self.config.default_limits
        lane, limits = limits.lane(model)
        prompt = messages[-1]["content"] if messages else ""
        budget = max_tokens or self.config.default_max_tokens
        completion, finish = self._rewrite(prompt, seed, fault)
        if self.config.count(completion) > budget:  # a real model stops at max_tokens: cut, finish "length"
            completion, finish = _cut(completion, budget, self.config.count), "length"
        prompt_tokens, completion_tokens = self.config.count_messages(messages), self.config.count(completion)
        actual = prompt_tokens + completion_tokens
        charged = max(budget, prompt_tokens) if self.config.charge == "max_tokens" else actual
        with self._lock:
            stats = self.stats.setdefault(key, KeyStats())
            limiter = self._windows.setdefault((key, lane), self.config.limiter())
            now = time.monotonic() if now is None else now
            stats.budgets.append(max_tokens)
            burst = stats.burst_at(now, self.config.faults,
                                   started_before=sum(len(s.bursts) for s in self.stats.values()))
            wait = 0.0 if burst else limiter.admit(now, charged, limits)
            headers = limiter.headers(limits, now)
            if burst:
                burst.refused.append(_call_id(model, messages, seed))
            if burst or wait:
                stats.rate_limited += 1
                stats.refused_at.append(now)
            else:
                stats.log.append((now, actual, lane))  # admissions, at what they finally cost
        return Answer(at=now, wait_s=wait, burst=burst, headers=headers, completion=completion, finish_reason=finish,
                      prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, charged=charged,
                      limiter=limiter)

    def finish(self, answer: Answer) -> None:
        """The completion is done: the limiter now counts what it really cost (charge: max_tokens)."""
        if answer.charged != answer.prompt_tokens + answer.completion_tokens:
            with self._lock:
                answer.limiter.settle(answer.at, answer.charged, answer.prompt_tokens + answer.completion_tokens)

    def _draw_fault(self) -> str | None:
        faults = self.config.faults
        draw = self._rng.random()
        for name in ("error_5xx", "timeout", "malformed", "truncated", "refusal", "trailing_client"):
            draw -= getattr(faults, name)
            if draw < 0:
                return name
        return None

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _rewrite(self, prompt: str, seed: object, fault: str | None) -> tuple[str, str]:
        if is_gate_prompt(prompt):  # persona profile, quality-gate rating or revision
            return offline_gate(prompt, seed, fault)
        if is_judge_prompt(prompt) or OPEN not in prompt:  # not a rewrite: an evaluation request
            return offline_evaluation(prompt, seed, fault)
        if fault == "refusal":
            return "抱歉，我无法完成这个请求。", "stop"
        dialogue = offline_rewrite(prompt, seed)
        if fault == "malformed":
            return re.sub(r"^[^：:\n]{1,6}[：:]", "", dialogue, flags=re.MULTILINE), "stop"
        if fault == "truncated":
            return dialogue[: len(dialogue) // 2], "length"
        if fault == "trailing_client":
            user_label = dialogue.split("：", 1)[0]
            return f"{dialogue}\n{user_label}：谢谢你的鼓励，我会努力的。", "stop"
        return dialogue, "stop"

    # -- running ----------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; returns the base URL (…/v1)."""
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="soulray-llm-server")
        self._thread.start()
        ready.wait(30)
        return f"http://{host}:{self.port}/v1"

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


_SENTENCE = re.compile(r"(?<=[。！？!?；;…])")
_EMPATHY = ["我能感受到你现在的不容易。", "谢谢你愿意把这些说出来。", "听起来这件事让你很困扰。", "你的感受是可以理解的。",
            "我在这里，愿意听你慢慢说。", "这确实需要很大的勇气。"]
_FOLLOW_UPS = ["嗯，可是我还是会担心。", "你说得对，但我不知道该从哪里开始。", "我试过，但好像没什么用。",
               "听你这么说，我好受了一些。", "那我应该怎么面对这种感觉呢？", "我有时候觉得只有我一个人这样。",
               "谢谢你，我会试着去做。", "可是身边的人好像都不理解我。"]


def offline_rewrite(prompt: str, seed: object = None) -> str:
    """A deterministic, model-free 'rewrite': the source answer's sentences laid out as 8-20 utterances
    in the prompt's own role labels, alternating with follow-up questions. For plumbing, not quality."""
    block = prompt.split(OPEN, 1)[-1].split(CLOSE, 1)[0].strip()
    user_label, assistant_label, question, answer = _split_block(block)
    rng = random.Random(hashlib.sha256(f"{block}|{seed}".encode()).digest())
    sentences = [s.strip() for s in _SENTENCE.split(answer) if s.strip()] or [rng.choice(_EMPATHY)]
    exchanges = max(4, min(10, math.ceil(len(sentences) / 2)))
    per_turn = max(1, math.ceil(len(sentences) / exchanges))
    first = re.sub(r"\s+", " ", question).strip()[:200] or "我最近心情很不好。"
    utterances = [f"{user_label}：{first}"]
    for index in range(exchanges):
        chunk = "".join(sentences[index * per_turn:(index + 1) * per_turn]) or rng.choice(_EMPATHY)
        utterances.append(f"{assistant_label}：{rng.choice(_EMPATHY)}{chunk}")
        if index < exchanges - 1:
            utterances.append(f"{user_label}：{rng.choice(_FOLLOW_UPS)}")
    return "\n".join(utterances)


_LABELLED = re.compile(r"^([^：:\n]{1,8})[：:](.*)$")


def _split_block(block: str) -> tuple[str, str, str, str]:
    """(user label, assistant label, question, answer) of a source block: the first labelled line opens
    the question, the next line with a different label opens the answer; other lines continue either."""
    lines = block.splitlines()
    first = _LABELLED.match(lines[0]) if lines else None
    user_label = first[1].strip() if first else "用户"
    question, answer, assistant_label, in_answer = [first[2] if first else block], [], "心理咨询师", False
    for line in lines[1:]:
        match = _LABELLED.match(line)
        if not in_answer and match and match[1].strip() != user_label:
            assistant_label, in_answer = match[1].strip(), True
            answer.append(match[2])
        else:
            (answer if in_answer else question).append(line)
    return user_label, assistant_label, "\n".join(question), "".join(answer)


def _cut(text: str, budget: int, count) -> str:
    """The longest prefix of `text` within `budget` tokens (as `count` counts them)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _busiest(stats: KeyStats, lane: str | None = None) -> dict[str, int]:
    return dict(zip(("requests", "tokens"), stats.max_in_window(60.0, lane), strict=True))


def _call_id(model: str, messages: object, seed: object) -> str:
    """What stays the same across the retries of one call: model, messages and seed."""
    return hashlib.sha256(json.dumps([model, messages, seed], ensure_ascii=False).encode()).hexdigest()[:16]


def _key_label(key: str) -> str:
    """Stats are reported per key without the key itself: its last 4 characters only."""
    return f"…{key[-4:]}" if key else "(none)"


def _headers(limits: SimulatedKey, *, remaining_requests: int, remaining_tokens: int, reset_requests_s: float,
             reset_tokens_s: float) -> dict[str, str]:
    """x-ratelimit-* as OpenAI sends them: limits per minute, what is left, and the resets as durations."""
    return {"x-ratelimit-limit-requests": str(limits.rpm), "x-ratelimit-limit-tokens": str(limits.tpm),
            "x-ratelimit-remaining-requests": str(remaining_requests),
            "x-ratelimit-remaining-tokens": str(remaining_tokens),
            "x-ratelimit-reset-requests": duration(reset_requests_s), "x-ratelimit-reset-tokens": duration(reset_tokens_s)}


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration strings: "6m0s", "1.5s", "20ms"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = "insufficient_quota" if code == "insufficient_quota" else (
        "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error")
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}},
                             status=status, headers=headers or {})
