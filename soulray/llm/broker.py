"""Cluster-wide API-key quotas: one ledger, held by one named async Ray actor, that never sleeps.

Callers ask for a reservation before each call (`reserve`: which key, and how long to wait first),
sleep locally, call, then `settle` with what really happened (tokens used, 429 + Retry-After, the
server's x-ratelimit-* headers, insufficient_quota). Keys travel by name only.

Pacing is a token bucket for requests and one for tokens per lane: a key, or one model on a key
when the config gives that model its own limits (OpenAI limits each model of a key separately). A grant says when the bucket will cover
the cost and subtracts it at once, so later callers see the debt and are told to wait longer: load
spreads over time without the broker ever blocking. Against a server counting a sliding 60 s
window, a bucket of capacity C refilled at (limit - C)/60 per second can never exceed the limit in
any window, so C starts small (1% of the limit) and utilisation stays ≥ 99% of the binding limit; the
token bucket then grows to the server's own bucket as its headers show it, and each lane also keeps a
record of its last minute, which says whether a call larger than the bucket fits the server's window.

A lane's token bucket counts in the server's tokens, which are never ours (DESIGN.md, "How real
providers behave"). Each lane learns the ratio of the server's counts (`usage`) to our own, for prompts
and completions apart; each prompt version and model learns how long its completions run relative to
the caller's prior guess. A reservation is then the learned prompt + expected completion, in the
server's tokens, and at least the request's max_tokens (OpenAI charges max(max_tokens, prompt) at
admission); max_tokens itself is a high percentile of the learned lengths with a margin, so no TPM is
held for headroom nobody uses.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from array import array
from collections import deque
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
    """A token bucket kept as the moment it will be full again (`full_at`, GCRA's theoretical arrival
    time), so that a call granted to start later (held back by another bucket, or a cool-down) is
    drawn at its start, not at its grant: a level drawn at grant time let the next calls start before
    a held-back one and bunch up with it (the requests bucket of a token-bound key let 2 calls a second
    through a 60 RPM key, issue 18)."""

    capacity: float
    rate: float  # per second
    full_at: float
    smallest: float = 1.0  # the capacity it starts with, and never goes below

    @classmethod
    def for_limit(cls, per_minute: int, now: float) -> _Bucket:
        capacity = max(1.0, per_minute * 0.01)
        return cls(capacity=capacity, rate=max(per_minute - capacity, 1e-9) / 60.0, full_at=now, smallest=capacity)

    def follow(self, server_capacity: float, keep: float, most: float) -> None:
        """Hold what the server's bucket holds less `keep`, at least the capacity it started with and
        at most `most` more than that: the requests bucket (below)."""
        self.capacity = max(self.smallest, min(server_capacity - keep, self.smallest + most))

    def resize(self, server_capacity: float, per_minute: int) -> None:
        """Hold as much as the server's own bucket does (learned from its headers), at most
        LARGEST_BURST of the minute: against a server that enforces the minute in one-second slices
        the burst must be that slice, against a sliding minute it may be larger (the lane's _Minute
        keeps the minute's total), and a small burst held back a key bound by requests whenever one
        call was larger than the bucket."""
        self.capacity = min(max(self.smallest, server_capacity), max(self.smallest, per_minute * LARGEST_BURST))

    def level(self, now: float) -> float:
        return self.capacity - max(0.0, self.full_at - now) * self.rate

    def earliest(self, cost: float, now: float, margin_s: float = 0.0, slack: float = 0.0) -> float:
        """When `cost` may start: when the level covers it (or the whole capacity, for a cost larger
        than the bucket, which then runs into debt that later callers wait out) and `slack` more, and
        `margin_s` later. The slack is not drawn: it stays in the bucket for the next call."""
        return max(now, self.full_at - (self.capacity - min(cost, self.capacity) - slack) / self.rate + margin_s)

    def take(self, cost: float, start: float) -> None:
        self.full_at = max(self.full_at, start) + cost / self.rate

    def refund(self, amount: float, now: float, floor: float = float("-inf")) -> None:
        """Give back (or, negative, charge) the difference between a reservation and what the call
        really cost; never above capacity, so an over-estimate cannot lift the lane past its burst size.
        `floor`: for a refund, the soonest the bucket can be full given the calls granted to start after
        the refunded one (_Minute.floor_after). Each was drawn at its start, so the bucket is full no
        sooner than if it had been full just before it: a refund that ignored them let a call refused by
        a one-second slice be granted again at the start of the next call, and both reach the server at
        once (the same call refused 20 times in a row, issue 18). A charge needs no floor: the bucket
        already waits for each."""
        self.full_at = max(now, floor if amount > 0 else now, self.full_at - amount / self.rate)

    def at_most(self, level: float, now: float) -> None:
        """What the server says it has left: never believe we have more."""
        self.full_at = max(self.full_at, now + (self.capacity - level) / self.rate)


# Until a prompt version's completion lengths are learned (and for calls without a CallShape), a call
# waits for this share of its reservation more in the bucket, as far as the bucket holds it.
ESTIMATE_SLACK = 0.4
# A call starts when the token bucket holds its reservation and a slack for the error of the estimates
# not yet settled (its own, and those of the calls in flight): SLACK_Z deviations of their sum, less the
# one deviation each reservation already holds (CompletionLengths.spread). Against one-second slices the
# server's bucket holds about one call, so a call sent the moment its estimate fits is refused whenever
# one of them ran long; a flat 40% of each call (the rule before) made a lane bound by tokens wait for a
# full bucket on every call over 1,190 tokens, and 1.3 deviations is ~60 tokens (issue 18; z = 2.3 is
# the one-sided 1%).
SLACK_Z = 2.3
MINUTE_MARGIN = 0.01  # of the tokens a minute: for the error of the estimates of calls not yet settled


class _Minute:
    """What a lane started in the last minute, as a sliding-window limiter counts it: each call at its
    start with the tokens reserved until it settles, then with the server's count. A bucket small
    enough to be safe (1% of the limit) cannot tell whether a call larger than the bucket fits the
    server's window; this can, exactly, for calls whose count the lane has learned. Calls are kept
    `linger_s` past the minute: the server saw each later than the start we planned. On a loaded
    machine calls reached the server up to 1-1.6 s late (99th percentile, load average 33 on 2 cores),
    and a quarter of a second let 1-3% of the calls into a sliding minute still holding their elders
    (issue 18); against a server enforcing slices the minute is our own bound, and a second of linger
    cost a key bound by tokens 1-2% of them."""

    LINGER_S = 1.0
    SLICED_LINGER_S = 0.25

    # With this many calls of the lane in flight the refund's floor comes from a tree (_Floors), kept
    # until they fall to a quarter of it; with fewer, a scan of the calls after the settled one costs
    # less than keeping the tree up to date at each grant and settlement (issue 22).
    TREE_FROM = 256

    def __init__(self, rate: float = 1.0, origin: float = 0.0) -> None:
        self.calls: deque[list[float]] = deque()  # [start, tokens, index], in the order granted
        self.tokens = 0.0
        self.linger_s = self.LINGER_S
        self.rate, self.origin = rate, origin
        self.floors: _Floors | None = None
        self.next_index = 0
        self.open = 0  # granted, not settled

    def _trim(self, now: float) -> None:
        while self.calls and self.calls[0][0] <= now - 60.0 - self.linger_s:
            self.tokens -= self.calls.popleft()[1]

    def earliest(self, tokens: float, limits: LaneLimits, now: float) -> float:
        """When a call of `tokens` fits under both limits, counting every call granted so far (those
        planned to start within GRANT_AHEAD_S too)."""
        self._trim(now)
        excess_tokens = self.tokens + tokens - limits.tpm * (1 - MINUTE_MARGIN)
        excess_requests = len(self.calls) + 1 - limits.rpm
        if excess_tokens <= 0 and excess_requests <= 0:
            return now
        at = now
        for index, (start, spent, _) in enumerate(self.calls):
            excess_tokens -= spent
            at = start + 60.0 + self.linger_s
            if excess_tokens <= 0 and index + 1 >= excess_requests:
                break
        return at

    def add(self, start: float, tokens: float) -> list[float]:
        call = [start, tokens, self.next_index]
        self.calls.append(call)
        self.tokens += tokens
        self.open += 1
        floors = self.floors
        if floors is None and self.open >= self.TREE_FROM:
            self.floors = _Floors(self.rate, self.origin, self.calls, self.next_index + 1)
        elif floors is not None:
            if self.next_index - floors.base >= floors.size:
                self.floors = _Floors(self.rate, self.origin, self.calls, self.next_index + 1)
            else:
                floors.put(self.next_index, start, tokens)
        self.next_index += 1
        return call

    def floor_after(self, call: list[float]) -> float:
        """The soonest a token bucket drawn by every call granted after `call` (at its start, for the
        tokens it reserved or, settled, was counted) can be full: the largest of start + (its tokens and
        those of every call granted after it) / rate over those calls; -inf if there are none. With
        many calls in flight the scan was most of a settlement's cost, linear in them (a 30,000 RPM
        lane with 20 s calls keeps ~10,000; issue 22): the tree gives it in O(log n)."""
        first = self.calls[0][2] if self.calls else self.next_index
        lo = max(int(call[2]) + 1, first)
        if self.floors is not None:
            return self.floors.largest(lo, self.next_index)
        floor, tokens_after, rate = float("-inf"), 0.0, self.rate
        for start, tokens, _ in itertools.islice(reversed(self.calls), self.next_index - lo):
            tokens_after += tokens
            floor = max(floor, start + tokens_after / rate)
        return floor

    def settle(self, call: list[float], tokens: float, now: float) -> None:
        self._trim(now)
        if call[0] > now - 60.0 - self.linger_s:  # still in the minute, so in the sum
            self.tokens += tokens - call[1]
        call[1] = tokens
        self.open -= 1
        if self.floors is not None:
            if self.open < self.TREE_FROM // 4:
                self.floors = None
            elif self.calls and call[2] >= self.calls[0][2]:
                self.floors.put(int(call[2]), call[0], tokens)


class _Floors:
    """A max-plus segment tree over a lane's calls in the order granted (leaf i = call i): each node
    keeps the sum of its calls' tokens and the largest start x rate + (the tokens of that call and of
    every later call in the node) over its calls, in tokens (no division on the way up), so the largest
    over any run of calls is O(log n). Calls leave at the front (the minute's trim) and are simply never
    asked for again; the leaves are laid out afresh, from the first call still kept, when the last leaf
    is used (with room for twice the calls kept, so that is amortised O(1) a call)."""

    SMALLEST = 1024

    def __init__(self, rate: float, origin: float, calls: deque[list[float]], next_index: int) -> None:
        """The calls kept (the last of them is call next_index - 1), with room for as many again."""
        self.rate = rate
        self.origin = origin  # starts are kept from here: x rate, seconds of the monotonic clock lose digits
        size = self.SMALLEST
        while size < 2 * (len(calls) + 1):
            size *= 2
        self.size, self.base = size, int(calls[0][2]) if calls else next_index
        self.total = array("d", bytes(16 * size))  # 8 bytes a node: a lane's minute may keep 100,000s of calls
        self.best = array("d", [float("-inf")]) * (2 * size)
        total, best = self.total, self.best
        for offset, (start, tokens, _) in enumerate(calls):
            total[size + offset], best[size + offset] = tokens, (start - origin) * rate + tokens
        for node in range(size - 1, 0, -1):
            right = 2 * node + 1
            total[node] = total[2 * node] + total[right]
            best[node] = max(best[right], best[2 * node] + total[right])

    def put(self, index: int, start: float, tokens: float) -> None:
        """Call `index` started at `start` with `tokens` (reserved, or counted once settled)."""
        total, best, rate = self.total, self.best, self.rate
        node = self.size + index - self.base
        total[node], best[node] = tokens, (start - self.origin) * rate + tokens
        node >>= 1
        while node:
            right = 2 * node + 1
            total[node] = total[2 * node] + total[right]
            best[node] = max(best[right], best[2 * node] + total[right])
            node >>= 1

    def largest(self, lo: int, hi: int) -> float:
        """max over calls lo <= j < hi of start_j + (tokens of calls j..hi-1) / rate, in seconds."""
        if lo >= hi:
            return float("-inf")
        total, best = self.total, self.best
        left, right = lo - self.base + self.size, hi - self.base + self.size
        left_best = right_best = float("-inf")
        right_total = 0.0
        while left < right:
            if left & 1:
                left_best = max(best[left], left_best + total[left])
                left += 1
            if right & 1:
                right -= 1
                right_best = max(right_best, best[right] + right_total)
                right_total += total[right]
            left >>= 1
            right >>= 1
        return self.origin + max(right_best, left_best + right_total) / self.rate


def _new_stats() -> dict[str, float]:
    # cut_by_length: completions that hit the max_tokens we derived (not the configured cap), re-asked
    # with a larger budget by the caller
    return {"requests": 0, "ok": 0, "rate_limited": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "cost_usd": 0.0, "cut_by_length": 0}


@dataclass
class _Ratio:
    """The server's count over ours, as a ratio of decayed sums over recent calls (a long text weighs
    more than a short one; ~50 calls of memory). 1.0 until the first call says otherwise."""

    server: float = 0.0
    ours: float = 0.0

    def add(self, server: int, ours: int) -> None:
        if server > 0 and ours > 0:
            self.server, self.ours = self.server * 0.98 + server, self.ours * 0.98 + ours

    @property
    def value(self) -> float:
        return self.server / self.ours if self.ours else 1.0


@dataclass
class CompletionLengths:
    """How long completions run for one prompt version and model, as a share of the caller's prior
    guess (CallShape.completion_tokens), in our tokens, over the last 500 completions that ended on
    their own (a cut one says only that it was longer)."""

    samples: deque = field(default_factory=lambda: deque(maxlen=CompletionLengths.KEPT))
    # kept as samples come and go, not summed and sorted again at each reservation after a settlement:
    # that was the broker's largest cost per call (a sort and two sums of 500 samples; issue 22)
    ordered: list[float] = field(default_factory=list)
    total: float = 0.0
    squares: float = 0.0
    adds: int = 0

    MIN_SAMPLES = 20  # before that, the configured max_tokens and the prior guess
    KEPT = 500

    def add(self, share: float) -> None:
        if len(self.samples) == self.KEPT:
            gone = self.samples[0]
            del self.ordered[bisect.bisect_left(self.ordered, gone)]
            self.total -= gone
            self.squares -= gone * gone
        self.samples.append(share)
        bisect.insort(self.ordered, share)
        self.adds += 1
        if self.adds % self.KEPT == 0:  # summed afresh now and then: running sums drift by rounding
            self.total, self.squares = math.fsum(self.samples), math.fsum(x * x for x in self.samples)
        else:
            self.total += share
            self.squares += share * share

    @property
    def learned(self) -> bool:
        return len(self.samples) >= self.MIN_SAMPLES

    def _mean(self) -> float:
        return self.total / len(self.samples)

    def deviation(self) -> float:
        mean = self._mean()
        return math.sqrt(max(0.0, self.squares / len(self.samples) - mean * mean))

    def spread(self) -> float:
        """Mean plus one standard deviation: what a reservation holds for the completion. A mean alone
        is short for half the calls, and a short reservation lets the next call start before the
        server has room for it (most 429s against one-second slices, where the room is one call)."""
        return self._mean() + self.deviation()

    def quantile(self, q: float) -> float:
        ordered = self.ordered
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class CallShape:
    """What a caller knows before a call, in our token counts (soulray/llm/tokens.py)."""

    prompt_tokens: int
    completion_tokens: int  # the prior guess of the completion's length
    max_tokens: int  # the configured cap on max_tokens
    namespace: str = ""  # the prompt (or rubric) version: completion lengths are learned per version and model
    min_max_tokens: int = 0  # a re-ask after finish_reason `length`: at least this budget


@dataclass(frozen=True)
class Budgeting:
    """How max_tokens is derived from the learned completion lengths: the `quantile` of the lengths
    times `margin`, plus `slack` tokens, at least `floor`."""

    quantile: float = 0.99
    margin: float = 1.25
    slack: int = 32
    floor: int = 64


@dataclass
class _Lane:
    """Pacing state of one lane: its buckets, calls in flight, and 429 cool-down."""

    limits: LaneLimits
    requests: _Bucket
    tokens: _Bucket
    minute: _Minute = field(default_factory=_Minute)
    last_start: float = float("-inf")  # of the calls granted so far
    # How much later than its bucket allows a call starts: calls reach the server later than planned,
    # by an RPC, a sleep and a request, and not by the same amount each time, so against a server
    # that allows one call a second two calls planned 1.02 s apart arrived 0.98 s apart (13% of calls
    # refused against one-second slices, issue 18). Learned from the 429s of calls the lane let
    # through (+ their Retry-After), forgotten slowly while calls pass.
    margin_s: float = 0.0
    in_flight: int = 0
    # the deviations of the reservations granted and not settled: their errors are what a slack covers
    pending_variance: float = 0.0
    pending_deviation: float = 0.0
    sliced: bool = False  # the server's token bucket, from its headers, is a slice of the minute (< 5%)
    prompt_ratio: _Ratio = field(default_factory=_Ratio)  # the server's prompt tokens over ours
    completion_ratio: _Ratio = field(default_factory=_Ratio)  # the same for completions
    cooldown_until: float = 0.0
    consecutive_429: int = 0
    backed_off_at: float = float("-inf")  # when the last 429 that lengthened the cool-down was settled

    @classmethod
    def for_limits(cls, limits: LaneLimits, now: float) -> _Lane:
        tokens = _Bucket.for_limit(limits.tpm, now)
        return cls(limits, _Bucket.for_limit(limits.rpm, now), tokens, _Minute(tokens.rate, now))

    def plan(self, shape: CallShape, lengths: CompletionLengths | None,
             budgeting: Budgeting) -> tuple[int, int, float | None]:
        """(tokens to reserve, max_tokens to send, the reservation's deviation, None until learned) for
        a call of `shape` on this lane, in the server's tokens: the learned prompt + expected completion,
        and at least max_tokens (OpenAI charges max(max_tokens, prompt) at admission)."""
        completion_ratio = self.completion_ratio.value
        if lengths is not None and lengths.learned:
            expected = shape.completion_tokens * lengths.spread()
            budget = shape.completion_tokens * lengths.quantile(budgeting.quantile) * budgeting.margin
            max_tokens = max(budgeting.floor, math.ceil(budget * completion_ratio) + budgeting.slack)
            deviation = shape.completion_tokens * lengths.deviation() * completion_ratio
        else:
            expected, max_tokens, deviation = shape.completion_tokens, shape.max_tokens, None
        max_tokens = min(shape.max_tokens, max(max_tokens, shape.min_max_tokens))
        expected_server = min(expected * completion_ratio, max_tokens)
        reserve = max(math.ceil(shape.prompt_tokens * self.prompt_ratio.value + expected_server), max_tokens)
        return reserve, max_tokens, deviation

    def slack(self, tokens: int, deviation: float | None) -> float:
        """What the token bucket must hold beyond `tokens` for a call to start (SLACK_Z). A call larger
        than the bucket waits for a full bucket whatever its own size, so only the calls in flight count."""
        if deviation is None:
            return max(0.0, min(ESTIMATE_SLACK * tokens, self.tokens.capacity - tokens))
        own = deviation if tokens < self.tokens.capacity else 0.0
        spread = SLACK_Z * math.sqrt(self.pending_variance + own ** 2)
        return max(0.0, spread - self.pending_deviation - own)

    def detour_s(self, tokens: int, typical_tokens: float) -> float:
        """How much later than its wait a call should count on this lane when keys are compared: on a
        lane bound by requests (typical calls fill its requests before its tokens) whose server
        enforces the minute in slices, a call holding the tokens longer than one request's turn delays
        the next call past its turn, and that turn is lost for good (a 60 RPM key served 0.88 of its
        requests when the earliest start sent it the calls over 2,500 tokens, its token bucket being
        the one full; issue 18). Weighted by DETOUR_WEIGHT: such a call goes elsewhere unless every
        other key is seconds away. Against a sliding minute the lane catches up (its requests bucket
        holds one more), and the detour only held up the job's batches: not there."""
        limits = self.limits
        if not (self.sliced and typical_tokens) or typical_tokens >= limits.tpm / limits.rpm:
            return 0.0
        return DETOUR_WEIGHT * max(0.0, tokens * 60.0 / limits.tpm - 60.0 / limits.rpm)


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
    estimated_tokens: int = 0  # reserved on the lane, in the server's tokens as far as learned
    estimated_cost: float = 0.0
    stop: str | None = None  # set when no call may be made (all keys out, budget reached)
    max_tokens: int | None = None  # the completion budget to send (with a CallShape)


@dataclass(frozen=True)
class _Open:
    """A reservation granted and not yet settled."""

    key: str
    lane: str
    model: str
    tokens: int
    cost: float
    starts: float  # when the call was told to start
    shape: CallShape | None
    max_tokens: int | None
    in_minute: list[float]  # its entry in the lane's _Minute
    deviation: float = 0.0  # of its reservation (_Lane.slack), 0 until learned


LARGEST_BURST = 0.1  # of a minute's limit: a bucket never holds more
# A call is granted at most this long before it may start. Granted further ahead, calls queued tens of
# seconds deep on a busy lane (64 callers, 4 calls a second) and no settlement or header could
# correct a schedule already handed out: the errors of the estimates added up past the bucket's
# capacity and the server refused (5% of calls in the quota simulation, issue 18).
GRANT_AHEAD_S = 1.0
MAX_COOLDOWN_FACTOR = 2.0
MAX_MARGIN_S = 0.1  # repeated 429s stretch a Retry-After at most this much
# A paced call refused lengthens the lane's start margin by what the server lacked plus MARGIN_STEP_S;
# each call that passes shortens it by MARGIN_DECAY_S, so the margin settles where about
# MARGIN_DECAY_S / MARGIN_STEP_S (0.2%) of the calls are refused. Shortened by 2% a call (the rule
# before), it settled where 8% of a one-second-slice key's calls were.
MARGIN_STEP_S = 0.005
MARGIN_DECAY_S = 0.0001
DETOUR_WEIGHT = 10.0
SLICED = 0.05  # of the minute: a server bucket smaller than this enforces the minute in slices
# The requests bucket follows the server's (remaining + reset × rate) less one request, as a reserve
# for calls that arrive earlier than planned, and at most one request above 1% of the minute: a key
# bound by tokens for a moment catches up one request after, and any 10 s still holds at most a sixth
# of the minute + 1% + 1 (the stage's pacing test).
REQUESTS_KEPT = 1.0
REQUESTS_CATCH_UP = 1.0


class QuotaLedger:
    """The pure bookkeeping; `QuotaBroker` is its Ray actor. Time is passed in, for tests."""

    def __init__(self, keys: list[KeyLimits], *, budget_usd: float | None = None, now: float | None = None,
                 budgeting: Budgeting = Budgeting()) -> None:
        self.keys = {k.name: _KeyState(k) for k in keys}
        self.budget_usd = budget_usd
        self.budgeting = budgeting
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._open: dict[int, _Open] = {}
        self._ids = itertools.count(1)
        self.lengths: dict[tuple[str, str], CompletionLengths] = {}  # (namespace, model) → completion lengths
        self.rows_done = 0  # rows the callers finished (for progress; calls are counted per key)
        self.persisted = 0  # paid answers the callers have written to the response cache
        self.interrupted: str | None = None  # set when the job is stopping: no call may start
        self.typical_tokens = 0.0  # a call's server tokens, averaged over the last ~50 answered calls
        self.tallies: dict[str, float] = {}  # callers' own counts, summed (calls per kind, the quality gate's)

    def interrupt(self, why: str) -> None:
        self.interrupted = why

    def reserve(self, model: str, estimated_tokens: int, estimated_cost: float, now: float | None = None,
                shape: CallShape | None = None) -> Reservation:
        """A lane and a wait for one call. With `shape`, the tokens reserved and the max_tokens to send
        come from what the lane and the model have learned (`estimated_tokens` is then unused);
        without, `estimated_tokens` is reserved as given."""
        now = time.monotonic() if now is None else now
        if self.interrupted:
            return Reservation(stop=f"interrupted: {self.interrupted}")
        if self.budget_usd is not None and self.spent_usd + self.reserved_usd + estimated_cost > self.budget_usd:
            return Reservation(stop=f"budget: ${self.spent_usd:.4f} spent + ${self.reserved_usd:.4f} reserved of "
                                    f"${self.budget_usd:.2f}; no new calls")
        lengths = self.lengths.get((shape.namespace, model)) if shape else None
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
            tokens, max_tokens, deviation = (lane.plan(shape, lengths, self.budgeting) if shape else
                                             (estimated_tokens, None, None))
            # never before a call granted earlier: the server checks each call against the calls it has
            # seen, so one slipped in ahead of a granted call takes the room that call was granted for
            start = max(lane.requests.earliest(1, now, lane.margin_s),
                        lane.tokens.earliest(tokens, now, lane.margin_s, lane.slack(tokens, deviation)),
                        lane.cooldown_until,
                        lane.minute.earliest(tokens, lane.limits, now), lane.last_start)
            wait = start - now
            headroom = lane.requests.level(now) / lane.requests.capacity + lane.tokens.level(now) / lane.tokens.capacity
            candidates.append((wait + lane.detour_s(tokens, self.typical_tokens), wait, -headroom, limits.name, state,
                               lane_name, lane, tokens, max_tokens, deviation))
        if not candidates:
            if busy:
                return Reservation(wait_s=0.05)  # every usable lane is at its concurrency limit: ask again soon
            return Reservation(stop="no usable key for model " + model + (": " + "; ".join(reasons) if reasons else ""))
        _, wait, _, name, state, lane_name, lane, tokens, max_tokens, deviation = min(
            candidates, key=lambda c: (c[0], c[2], c[3]))
        if wait > GRANT_AHEAD_S:
            return Reservation(wait_s=wait)  # come back then: nothing is held for a call this far off
        lane.last_start = now + wait
        lane.requests.take(1, now + wait)
        lane.tokens.take(tokens, now + wait)
        in_minute = lane.minute.add(now + wait, tokens)
        lane.in_flight += 1
        deviation = deviation or 0.0
        lane.pending_variance += deviation ** 2
        lane.pending_deviation += deviation
        state.reserved_usd += estimated_cost
        self.reserved_usd += estimated_cost
        state.count(model, "requests")
        reservation_id = next(self._ids)
        self._open[reservation_id] = _Open(name, lane_name, model, tokens, estimated_cost, now + wait, shape, max_tokens,
                                           in_minute, deviation)
        return Reservation(id=reservation_id, key=name, wait_s=wait, estimated_tokens=tokens,
                           estimated_cost=estimated_cost, max_tokens=max_tokens)

    def settle(self, reservation_id: int, *, status: str, prompt_tokens: int = 0, completion_tokens: int = 0,
               cost_usd: float = 0.0, retry_after_s: float | None = None, remaining_requests: int | None = None,
               remaining_tokens: int | None = None, reset_requests_s: float | None = None,
               reset_tokens_s: float | None = None, own_completion_tokens: int | None = None,
               finish_reason: str | None = None, now: float | None = None) -> None:
        """status: ok | rate_limited | insufficient_quota | error (a failed call that may have cost nothing).
        prompt/completion tokens are the server's (`usage`); own_completion_tokens is the completion
        as we count it, for learning the ratio between the two."""
        now = time.monotonic() if now is None else now
        call = self._open.pop(reservation_id)
        state = self.keys[call.key]
        lane = state.lanes[call.lane]
        lane.in_flight -= 1
        lane.pending_variance = max(0.0, lane.pending_variance - call.deviation ** 2)
        lane.pending_deviation = max(0.0, lane.pending_deviation - call.deviation)
        state.reserved_usd -= call.cost
        self.reserved_usd -= call.cost
        state.spent_usd += cost_usd
        self.spent_usd += cost_usd
        refunded = call.tokens - (prompt_tokens + completion_tokens)
        lane.tokens.refund(refunded, now, lane.minute.floor_after(call.in_minute) if refunded > 0 else now)
        lane.minute.settle(call.in_minute, prompt_tokens + completion_tokens, now)
        state.count(call.model, "prompt_tokens", prompt_tokens)
        state.count(call.model, "completion_tokens", completion_tokens)
        state.count(call.model, "cost_usd", cost_usd)
        if status == "ok":
            state.count(call.model, "ok")
            lane.consecutive_429 = 0
            lane.margin_s = max(0.0, lane.margin_s - MARGIN_DECAY_S)
            self._learn(call, lane, prompt_tokens, completion_tokens, own_completion_tokens, finish_reason)
            used = prompt_tokens + completion_tokens
            self.typical_tokens = 0.98 * self.typical_tokens + 0.02 * used if self.typical_tokens else float(used)
            if finish_reason == "length" and call.shape and call.max_tokens is not None \
                    and call.max_tokens < call.shape.max_tokens:
                state.count(call.model, "cut_by_length")
        elif status == "rate_limited":
            state.count(call.model, "rate_limited")
            if retry_after_s is not None and call.starts >= lane.backed_off_at and call.starts >= lane.cooldown_until:
                lane.margin_s = min(MAX_MARGIN_S, lane.margin_s + min(retry_after_s, MAX_MARGIN_S) + MARGIN_STEP_S)
            self._cool_down(lane, call, retry_after_s, now)
        elif status == "insufficient_quota":
            state.count(call.model, "errors")
            state.disabled = "insufficient_quota (no credit left on this key)"
        else:
            state.count(call.model, "errors")
        # the server knows its own window: never believe we have more headroom than it had when it
        # admitted (or refused) this call, plus what has refilled since. On a 429 this is what corrects
        # an estimate that was too low, before any cool-down.
        # And the server's bucket is as large as what it has left plus what refills until its reset
        # ("x-ratelimit-reset-tokens": until the bucket is full again).
        since = max(0.0, now - call.starts)
        for bucket, remaining, reset, per_minute in ((lane.requests, remaining_requests, reset_requests_s, lane.limits.rpm),
                                                     (lane.tokens, remaining_tokens, reset_tokens_s, lane.limits.tpm)):
            if remaining is None:
                continue
            if reset is not None and bucket is lane.requests:  # never in debt: a call is one request
                bucket.follow(remaining + reset * per_minute / 60.0, REQUESTS_KEPT, REQUESTS_CATCH_UP)
            elif reset is not None and remaining > 0:  # at 0 the token bucket may be in debt
                bucket.resize(remaining + reset * per_minute / 60.0, per_minute)
                lane.sliced = remaining + reset * per_minute / 60.0 < SLICED * per_minute
                lane.minute.linger_s = _Minute.SLICED_LINGER_S if lane.sliced else _Minute.LINGER_S
            bucket.at_most(remaining + since * bucket.rate, now)

    def reserve_many(self, requests: list[tuple[str, int, float, CallShape | None]],
                     now: float | None = None) -> list[Reservation]:
        """Several reservations (model, estimated tokens, estimated cost, shape each), granted in order
        exactly as if they had come one by one at `now`: what a caller's coalesced requests get."""
        return [self.reserve(model, tokens, cost, now=now, shape=shape) for model, tokens, cost, shape in requests]

    def settle_many(self, settlements: list[tuple[int, dict[str, Any]]], now: float | None = None) -> None:
        """Several settlements (reservation id, outcome each), in order, as one by one at `now`."""
        for reservation_id, outcome in settlements:
            self.settle(reservation_id, **outcome, now=now)

    def _learn(self, call: _Open, lane: _Lane, prompt_tokens: int, completion_tokens: int,
               own_completion_tokens: int | None, finish_reason: str | None) -> None:
        if call.shape is None:
            return
        lane.prompt_ratio.add(prompt_tokens, call.shape.prompt_tokens)
        if own_completion_tokens is None:
            return
        lane.completion_ratio.add(completion_tokens, own_completion_tokens)
        if finish_reason != "length" and call.shape.completion_tokens > 0:
            lengths = self.lengths.setdefault((call.shape.namespace, call.model), CompletionLengths())
            lengths.add(own_completion_tokens / call.shape.completion_tokens)

    @staticmethod
    def _cool_down(lane: _Lane, call: _Open, retry_after_s: float | None, now: float) -> None:
        """Honour Retry-After (without one: 1, 2, 4 … 60 s). Repeated 429s stretch a Retry-After, by at
        most MAX_COOLDOWN_FACTOR: a 429 from a misjudged charge is corrected by the headers (settle),
        and a lane that kept lengthening its pause went idle for minutes (issue 18)."""
        # a call made after the last back-off began and refused again is a repeat. One made before is an
        # echo of the same refusal (a burst answers every call in flight): counting those as repeats
        # turned 16 calls in flight into a cool-down of minutes.
        if call.starts >= lane.backed_off_at:
            lane.consecutive_429 += 1
            lane.backed_off_at = now
        repeats = lane.consecutive_429 - 1
        if retry_after_s is not None:
            pause = retry_after_s * min(MAX_COOLDOWN_FACTOR, 1 + 0.5 * repeats)
        else:
            pause = min(60.0, 2.0 ** repeats)
        lane.cooldown_until = max(lane.cooldown_until, now + pause)

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
                "rows_done": self.rows_done, "persisted": self.persisted, "interrupted": self.interrupted,
                "tallies": dict(self.tallies)}


class QuotaBroker:
    """The Ray actor holding the ledger (async: calls interleave, none blocks)."""

    def __init__(self, keys: list[KeyLimits], budget_usd: float | None = None,
                 budgeting: Budgeting = Budgeting()) -> None:
        self.ledger = QuotaLedger(keys, budget_usd=budget_usd, budgeting=budgeting)

    async def reserve(self, model: str, estimated_tokens: int, estimated_cost: float,
                      shape: CallShape | None = None) -> Reservation:
        return self.ledger.reserve(model, estimated_tokens, estimated_cost, shape=shape)

    async def reserve_many(self, requests: list[tuple[str, int, float, CallShape | None]]) -> list[Reservation]:
        """Several reservations in one call (model, estimated tokens, estimated cost, shape each),
        granted in order exactly as if they had come one by one."""
        return self.ledger.reserve_many(requests)

    async def settle(self, reservation_id: int, **outcome: object) -> None:
        self.ledger.settle(reservation_id, **outcome)

    async def settle_many(self, settlements: list[tuple[int, dict[str, object]]]) -> None:
        """Several settlements in one call (soulray/llm/client.py BrokerLink batches them)."""
        self.ledger.settle_many(settlements)

    async def snapshot(self) -> dict[str, Any]:
        return self.ledger.snapshot()

    async def progress(self, rows: int) -> None:
        self.ledger.rows_done += rows

    async def persisted(self, answers: int) -> None:
        self.ledger.persisted += answers

    async def tally(self, counts: dict[str, float]) -> None:
        """Add callers' counts (flat names → numbers) to the run's tallies."""
        for name, value in counts.items():
            self.ledger.tallies[name] = self.ledger.tallies.get(name, 0.0) + value

    async def interrupt(self, why: str) -> None:
        self.ledger.interrupt(why)


def start_broker(name: str, keys: list[KeyLimits], budget_usd: float | None, namespace: str,
                 budgeting: Budgeting = Budgeting()):
    import ray

    # no task events: every reservation and settlement is an actor call, millions in a long run, and the GCS
    # keeps up to 100k task events (~370 MB of its memory at 500k rows, issue 22) for nobody to read
    actor = ray.remote(QuotaBroker).options(name=name, namespace=namespace, num_cpus=0, max_concurrency=1000,
                                            lifetime=None, get_if_exists=True, enable_task_events=False)
    return actor.remote(keys, budget_usd, budgeting)
