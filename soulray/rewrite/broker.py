"""Cluster-wide API-key quotas: one ledger, held by one named async Ray actor, that never sleeps.

Callers ask for a reservation before each call (`reserve`: which key, and how long to wait first),
sleep locally, call, then `settle` with what really happened (tokens used, 429 + Retry-After, the
server's x-ratelimit-* headers, insufficient_quota). Keys travel by name only.

Pacing is a token bucket per key for requests and for tokens. A grant says when the bucket will cover
the cost and subtracts it at once, so later callers see the debt and are told to wait longer: load
spreads over time without the broker ever blocking. Against a server counting a sliding 60 s
window, a bucket of capacity C refilled at (limit - C)/60 per second can never exceed the limit in
any window, so C is kept small (1% of the limit) and utilisation stays ≥ 99% of the binding limit.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyLimits:
    name: str
    rpm: int
    tpm: int
    max_concurrent: int
    budget_usd: float | None = None
    models: tuple[str, ...] | None = None  # None: serves every model


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


@dataclass
class _KeyState:
    limits: KeyLimits
    requests: _Bucket
    tokens: _Bucket
    in_flight: int = 0
    cooldown_until: float = 0.0
    consecutive_429: int = 0
    disabled: str | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    stats: dict[str, float] = field(default_factory=lambda: {
        "requests": 0, "ok": 0, "rate_limited": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
        "cost_usd": 0.0})


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
        now = time.monotonic() if now is None else now
        self.keys = {k.name: _KeyState(k, _Bucket.for_limit(k.rpm, now), _Bucket.for_limit(k.tpm, now)) for k in keys}
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._open: dict[int, tuple[str, int, float]] = {}
        self._ids = itertools.count(1)

    def reserve(self, model: str, estimated_tokens: int, estimated_cost: float, now: float | None = None) -> Reservation:
        now = time.monotonic() if now is None else now
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
            if state.in_flight >= limits.max_concurrent:
                busy = True
                continue
            state.requests.refill(now)
            state.tokens.refill(now)
            wait = max(state.requests.wait(1), state.tokens.wait(estimated_tokens), state.cooldown_until - now, 0.0)
            headroom = state.requests.level / state.requests.capacity + state.tokens.level / state.tokens.capacity
            candidates.append((wait, -headroom, limits.name, state))
        if not candidates:
            if busy:
                return Reservation(wait_s=0.05)  # every usable key is at its concurrency limit: ask again soon
            return Reservation(stop="no usable key for model " + model + (": " + "; ".join(reasons) if reasons else ""))
        wait, _, name, state = min(candidates, key=lambda c: (c[0], c[1], c[2]))
        state.requests.level -= 1
        state.tokens.level -= estimated_tokens
        state.in_flight += 1
        state.reserved_usd += estimated_cost
        self.reserved_usd += estimated_cost
        state.stats["requests"] += 1
        reservation_id = next(self._ids)
        self._open[reservation_id] = (name, estimated_tokens, estimated_cost)
        return Reservation(id=reservation_id, key=name, wait_s=wait, estimated_tokens=estimated_tokens,
                           estimated_cost=estimated_cost)

    def settle(self, reservation_id: int, *, status: str, prompt_tokens: int = 0, completion_tokens: int = 0,
               cost_usd: float = 0.0, retry_after_s: float | None = None, remaining_requests: int | None = None,
               remaining_tokens: int | None = None, now: float | None = None) -> None:
        """status: ok | rate_limited | insufficient_quota | error (a failed call that may have cost nothing)."""
        now = time.monotonic() if now is None else now
        name, estimated_tokens, estimated_cost = self._open.pop(reservation_id)
        state = self.keys[name]
        state.in_flight -= 1
        state.reserved_usd -= estimated_cost
        self.reserved_usd -= estimated_cost
        state.spent_usd += cost_usd
        self.spent_usd += cost_usd
        state.tokens.refill(now)
        used = prompt_tokens + completion_tokens
        state.tokens.level += estimated_tokens - used  # refund the estimate, charge what was really used
        state.stats["prompt_tokens"] += prompt_tokens
        state.stats["completion_tokens"] += completion_tokens
        state.stats["cost_usd"] += cost_usd
        if status == "ok":
            state.stats["ok"] += 1
            state.consecutive_429 = 0
        elif status == "rate_limited":
            state.stats["rate_limited"] += 1
            state.consecutive_429 += 1
            # honour Retry-After; without one back off 1, 2, 4 … 60 s; repeated 429s cool the key longer
            pause = retry_after_s if retry_after_s is not None else min(60.0, 2.0 ** (state.consecutive_429 - 1))
            state.cooldown_until = max(state.cooldown_until, now + pause * (1 + 0.5 * (state.consecutive_429 - 1)))
        elif status == "insufficient_quota":
            state.stats["errors"] += 1
            state.disabled = "insufficient_quota (no credit left on this key)"
        else:
            state.stats["errors"] += 1
        # the server knows its own window: never believe we have more headroom than it says
        state.requests.refill(now)
        if remaining_requests is not None:
            state.requests.level = min(state.requests.level, remaining_requests - state.requests.capacity)
        if remaining_tokens is not None:
            state.tokens.level = min(state.tokens.level, remaining_tokens - state.tokens.capacity)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {name: {**state.stats, "disabled": state.disabled, "in_flight": state.in_flight}
                for name, state in self.keys.items()} | {
            "_total": {"spent_usd": self.spent_usd, "budget_usd": self.budget_usd}}


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

    async def snapshot(self) -> dict[str, dict[str, object]]:
        return self.ledger.snapshot()


def start_broker(name: str, keys: list[KeyLimits], budget_usd: float | None, namespace: str):
    import ray

    actor = ray.remote(QuotaBroker).options(name=name, namespace=namespace, num_cpus=0, max_concurrency=1000,
                                            lifetime=None, get_if_exists=True)
    return actor.remote(keys, budget_usd)
