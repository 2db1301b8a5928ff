"""Cluster-wide API-key quotas: one ledger, held by one named async Ray actor, that never sleeps.

Callers ask for a reservation before each call (`reserve`: which key, and how long to wait first),
sleep locally, call, then `settle` with what really happened (tokens used, 429 + Retry-After, the
server's x-ratelimit-* headers, insufficient_quota). Keys travel by name only.

Pacing is a token bucket for requests and one for tokens per lane: a key, or one model on a key
when the config gives that model its own limits (OpenAI limits each model of a key separately). A grant says when the bucket will cover
the cost and subtracts it at once, so later callers see the debt and are told to wait longer: load
spreads over time without the broker ever blocking. Against a server counting a sliding 60 s
window, a bucket of capacity C refilled at (limit - C)/60 per second can never exceed the limit in
any window, so C is kept small (1% of the limit) and utilisation stays ≥ 99% of the binding limit.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LaneLimits:
    """The limits one quota lane enforces: a whole key, or one model on a key."""

    rpm: int
    tpm: int
    max_concurrent: int


SHARED_LANE = "*"


@dataclass(frozen=True)
class KeyLimits:
    name: str
    rpm: int
    tpm: int
    max_concurrent: int
    budget_usd: float | None = None
    models: tuple[str, ...] | None = None  # None: serves every model
    # OpenAI limits each model of a key separately: a model listed here gets its own lane with these
    # limits; every other model shares the key-level lane (rpm/tpm/max_concurrent above)
    model_limits: tuple[tuple[str, LaneLimits], ...] = ()

    def lane(self, model: str) -> tuple[str, LaneLimits]:
        for name, limits in self.model_limits:
            if name == model:
                return name, limits
        return SHARED_LANE, LaneLimits(rpm=self.rpm, tpm=self.tpm, max_concurrent=self.max_concurrent)


@dataclass
class _Bucket:
    capacity: float
    rate: float  # per second
    level: float
    updated: float

    @classmethod
    def for_limit(cls, per_minute: int, now: float) -> _Bucket:
        capacity = max(1.0, per_minute * 0.01)
        return cls(capacity=capacity, rate=max(per_minute - capacity, 1e-9) / 60.0, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float) -> float:
        """Seconds until `cost` may be taken: until the level covers it (or the whole capacity, for a
        cost larger than the bucket, which then runs into debt that later callers wait out)."""
        return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)


def _new_stats() -> dict[str, float]:
    return {"requests": 0, "ok": 0, "rate_limited": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "cost_usd": 0.0}


@dataclass
class _Lane:
    """Pacing state of one lane: its buckets, calls in flight, and 429 cool-down."""

    limits: LaneLimits
    requests: _Bucket
    tokens: _Bucket
    in_flight: int = 0
    cooldown_until: float = 0.0
    consecutive_429: int = 0
    backed_off_at: float = float("-inf")  # when the last 429 that lengthened the cool-down was settled

    @classmethod
    def for_limits(cls, limits: LaneLimits, now: float) -> _Lane:
        return cls(limits, _Bucket.for_limit(limits.rpm, now), _Bucket.for_limit(limits.tpm, now))


@dataclass
class _KeyState:
    limits: KeyLimits
    lanes: dict[str, _Lane] = field(default_factory=dict)
    disabled: str | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    stats: dict[str, float] = field(default_factory=_new_stats)
    model_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def lane(self, model: str, now: float) -> tuple[str, _Lane]:
        name, limits = self.limits.lane(model)
        if name not in self.lanes:
            self.lanes[name] = _Lane.for_limits(limits, now)
        return name, self.lanes[name]

    def count(self, model: str, field_name: str, amount: float = 1) -> None:
        self.stats[field_name] += amount
        self.model_stats.setdefault(model, _new_stats())[field_name] += amount


@dataclass(frozen=True)
class Reservation:
    id: int | None = None
    key: str | None = None
    wait_s: float = 0.0
    estimated_tokens: int = 0
    estimated_cost: float = 0.0
    stop: str | None = None  # set when no call may be made (all keys out, budget reached)


class QuotaLedger:
    """The pure bookkeeping; `QuotaBroker` is its Ray actor. Time is passed in, for tests."""

    def __init__(self, keys: list[KeyLimits], *, budget_usd: float | None = None, now: float | None = None) -> None:
        self.keys = {k.name: _KeyState(k) for k in keys}
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        # id → key, lane, model, tokens, cost, when the call starts
        self._open: dict[int, tuple[str, str, str, int, float, float]] = {}
        self._ids = itertools.count(1)
        self.rows_done = 0  # rows the callers finished (for progress; calls are counted per key)
        self.persisted = 0  # paid answers the callers have written to the response cache
        self.interrupted: str | None = None  # set when the job is stopping: no call may start

    def interrupt(self, why: str) -> None:
        self.interrupted = why

    def reserve(self, model: str, estimated_tokens: int, estimated_cost: float, now: float | None = None) -> Reservation:
        now = time.monotonic() if now is None else now
        if self.interrupted:
            return Reservation(stop=f"interrupted: {self.interrupted}")
        if self.budget_usd is not None and self.spent_usd + self.reserved_usd + estimated_cost > self.budget_usd:
            return Reservation(stop=f"budget: ${self.spent_usd:.4f} spent + ${self.reserved_usd:.4f} reserved of "
                                    f"${self.budget_usd:.2f}; no new calls")
        candidates, busy, reasons = [], False, []
        for state in self.keys.values():
            limits = state.limits
            if limits.models is not None and model not in limits.models:
                continue
            if state.disabled:
                reasons.append(f"{limits.name}: {state.disabled}")
                continue
            if limits.budget_usd is not None and state.spent_usd + state.reserved_usd + estimated_cost > limits.budget_usd:
                reasons.append(f"{limits.name}: key budget reached")
                continue
            lane_name, lane = state.lane(model, now)
            if lane.in_flight >= lane.limits.max_concurrent:
                busy = True
                continue
            lane.requests.refill(now)
            lane.tokens.refill(now)
            wait = max(lane.requests.wait(1), lane.tokens.wait(estimated_tokens), lane.cooldown_until - now, 0.0)
            headroom = lane.requests.level / lane.requests.capacity + lane.tokens.level / lane.tokens.capacity
            candidates.append((wait, -headroom, limits.name, state, lane_name, lane))
        if not candidates:
            if busy:
                return Reservation(wait_s=0.05)  # every usable lane is at its concurrency limit: ask again soon
            return Reservation(stop="no usable key for model " + model + (": " + "; ".join(reasons) if reasons else ""))
        wait, _, name, state, lane_name, lane = min(candidates, key=lambda c: (c[0], c[1], c[2]))
        lane.requests.level -= 1
        lane.tokens.level -= estimated_tokens
        lane.in_flight += 1
        state.reserved_usd += estimated_cost
        self.reserved_usd += estimated_cost
        state.count(model, "requests")
        reservation_id = next(self._ids)
        self._open[reservation_id] = (name, lane_name, model, estimated_tokens, estimated_cost, now + wait)
        return Reservation(id=reservation_id, key=name, wait_s=wait, estimated_tokens=estimated_tokens,
                           estimated_cost=estimated_cost)

    def settle(self, reservation_id: int, *, status: str, prompt_tokens: int = 0, completion_tokens: int = 0,
               cost_usd: float = 0.0, retry_after_s: float | None = None, remaining_requests: int | None = None,
               remaining_tokens: int | None = None, now: float | None = None) -> None:
        """status: ok | rate_limited | insufficient_quota | error (a failed call that may have cost nothing)."""
        now = time.monotonic() if now is None else now
        name, lane_name, model, estimated_tokens, estimated_cost, started = self._open.pop(reservation_id)
        state = self.keys[name]
        lane = state.lanes[lane_name]
        lane.in_flight -= 1
        state.reserved_usd -= estimated_cost
        self.reserved_usd -= estimated_cost
        state.spent_usd += cost_usd
        self.spent_usd += cost_usd
        lane.tokens.refill(now)
        used = prompt_tokens + completion_tokens
        lane.tokens.level += estimated_tokens - used  # refund the estimate, charge what was really used
        state.count(model, "prompt_tokens", prompt_tokens)
        state.count(model, "completion_tokens", completion_tokens)
        state.count(model, "cost_usd", cost_usd)
        if status == "ok":
            state.count(model, "ok")
            lane.consecutive_429 = 0
        elif status == "rate_limited":
            state.count(model, "rate_limited")
            # a call made after the last back-off began and refused again is a repeat: back off longer.
            # One made before is an echo of the same refusal (a burst answers every call in flight):
            # counting those as repeats turned 16 calls in flight into a cool-down of minutes.
            if started >= lane.backed_off_at:
                lane.consecutive_429 += 1
                lane.backed_off_at = now
            # honour Retry-After; without one back off 1, 2, 4 … 60 s; repeated 429s cool the lane longer
            pause = retry_after_s if retry_after_s is not None else min(60.0, 2.0 ** (lane.consecutive_429 - 1))
            lane.cooldown_until = max(lane.cooldown_until, now + pause * (1 + 0.5 * (lane.consecutive_429 - 1)))
        elif status == "insufficient_quota":
            state.count(model, "errors")
            state.disabled = "insufficient_quota (no credit left on this key)"
        else:
            state.count(model, "errors")
        # the server knows its own window: never believe we have more headroom than it says
        lane.requests.refill(now)
        if remaining_requests is not None:
            lane.requests.level = min(lane.requests.level, remaining_requests - lane.requests.capacity)
        if remaining_tokens is not None:
            lane.tokens.level = min(lane.tokens.level, remaining_tokens - lane.tokens.capacity)

    def snapshot(self) -> dict[str, Any]:
        """Calls, tokens and spend so far: per key (with a per-model breakdown), per model, in total."""
        keys = {name: {**state.stats, "disabled": state.disabled,
                       "in_flight": sum(lane.in_flight for lane in state.lanes.values()),
                       "models": {model: dict(stats) for model, stats in state.model_stats.items()}}
                for name, state in self.keys.items()}
        models: dict[str, dict[str, float]] = {}
        for state in self.keys.values():
            for model, stats in state.model_stats.items():
                total = models.setdefault(model, _new_stats())
                for field_name, value in stats.items():
                    total[field_name] += value
        return {"keys": keys, "models": models, "spent_usd": self.spent_usd, "budget_usd": self.budget_usd,
                "rows_done": self.rows_done, "persisted": self.persisted, "interrupted": self.interrupted}


class QuotaBroker:
    """The Ray actor holding the ledger (async: calls interleave, none blocks)."""

    def __init__(self, keys: list[KeyLimits], budget_usd: float | None = None) -> None:
        self.ledger = QuotaLedger(keys, budget_usd=budget_usd)

    async def reserve(self, model: str, estimated_tokens: int, estimated_cost: float) -> Reservation:
        return self.ledger.reserve(model, estimated_tokens, estimated_cost)

    async def reserve_many(self, requests: list[tuple[str, int, float]]) -> list[Reservation]:
        """Several reservations in one call (model, estimated tokens, estimated cost each), granted in
        order exactly as if they had come one by one."""
        return [self.ledger.reserve(model, tokens, cost) for model, tokens, cost in requests]

    async def settle(self, reservation_id: int, **outcome: object) -> None:
        self.ledger.settle(reservation_id, **outcome)

    async def settle_many(self, settlements: list[tuple[int, dict[str, object]]]) -> None:
        """Several settlements in one call: actors batch them, halving the broker's per-request cost."""
        for reservation_id, outcome in settlements:
            self.ledger.settle(reservation_id, **outcome)

    async def snapshot(self) -> dict[str, Any]:
        return self.ledger.snapshot()

    async def progress(self, rows: int) -> None:
        self.ledger.rows_done += rows

    async def persisted(self, answers: int) -> None:
        self.ledger.persisted += answers

    async def interrupt(self, why: str) -> None:
        self.ledger.interrupt(why)


def start_broker(name: str, keys: list[KeyLimits], budget_usd: float | None, namespace: str):
    import ray

    actor = ray.remote(QuotaBroker).options(name=name, namespace=namespace, num_cpus=0, max_concurrency=1000,
                                            lifetime=None, get_if_exists=True)
    return actor.remote(keys, budget_usd)
