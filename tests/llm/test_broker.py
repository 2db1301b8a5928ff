"""The quota ledger, with time passed in: pacing, Retry-After, key rotation, quotas, budgets."""

import math

import pytest

from soulray.llm.broker import Budgeting, CallShape, CompletionLengths, KeyLimits, QuotaLedger


def keys(*limits: tuple[str, int, int]) -> list[KeyLimits]:
    return [KeyLimits(name=name, rpm=rpm, tpm=tpm, max_concurrent=100) for name, rpm, tpm in limits]


def drive(ledger: QuotaLedger, seconds: float, tokens: int = 100, model: str = "m",
          start_at: float = 0.0) -> dict[str, list[float]]:
    """Greedy callers: reserve as fast as allowed (a call starts at now + wait) and settle at once."""
    starts: dict[str, list[float]] = {}
    now, seconds = start_at, start_at + seconds
    while now < seconds:
        grant = ledger.reserve(model, tokens, 0.0, now=now)
        start = now + grant.wait_s
        if grant.id is None:  # come back later
            now = start
            continue
        if start >= seconds:
            ledger.settle(grant.id, status="ok", prompt_tokens=tokens, now=start)
            break
        starts.setdefault(grant.key, []).append(start)
        ledger.settle(grant.id, status="ok", prompt_tokens=tokens, now=start)
        now = start
    return starts


def max_in_window(times: list[float], window: float = 60.0) -> int:
    best, left = 0, 0
    for right, moment in enumerate(times):
        while times[left] <= moment - window:
            left += 1
        best = max(best, right - left + 1)
    return best


def test_requests_per_minute_never_exceeded_and_nearly_used():
    ledger = QuotaLedger(keys(("a", 600, 10**9)), now=0.0)
    starts = drive(ledger, 180.0)["a"]
    assert max_in_window(starts) <= 600
    assert len(starts) >= 0.97 * 600 * 3


def test_tokens_per_minute_bind_when_tighter():
    ledger = QuotaLedger(keys(("a", 10_000, 60_000)), now=0.0)
    starts = drive(ledger, 120.0, tokens=1_000)["a"]
    assert max_in_window(starts) * 1_000 <= 60_000 + 1_000  # at most one request's estimate over
    assert len(starts) >= 0.95 * 60 * 2


def test_load_spreads_over_keys_by_headroom():
    ledger = QuotaLedger(keys(("small", 60, 10**9), ("big", 600, 10**9), ("mid", 300, 10**9)), now=0.0)
    starts = drive(ledger, 120.0)
    counts = {name: len(times) for name, times in starts.items()}
    for name, rpm in (("small", 60), ("big", 600), ("mid", 300)):
        assert max_in_window(starts[name]) <= rpm
        assert counts[name] >= 0.95 * rpm * 2  # each key used to its own limit: aggregate ≈ 960/min


def test_retry_after_cools_the_key_and_repeated_429s_cool_longer():
    ledger = QuotaLedger(keys(("a", 6000, 10**9), ("b", 6000, 10**9)), now=0.0)
    first = ledger.reserve("m", 10, 0.0, now=0.0)
    ledger.settle(first.id, status="rate_limited", retry_after_s=5.0, now=0.0)
    other = ledger.reserve("m", 10, 0.0, now=0.1)
    assert other.key != first.key and other.wait_s == 0.0  # rotated to the other key
    ledger.settle(other.id, status="rate_limited", retry_after_s=5.0, now=0.1)
    grant = ledger.reserve("m", 10, 0.0, now=0.3)
    # everything is cooling down: told to come back, not refused, and nothing held meanwhile
    assert grant.wait_s >= 4.5 and grant.id is None and grant.stop is None


def test_insufficient_quota_disables_only_that_key():
    ledger = QuotaLedger(keys(("broke", 6000, 10**9), ("ok", 60, 10**9)), now=0.0)
    grant = ledger.reserve("m", 10, 0.0, now=0.0)
    assert grant.key == "broke"  # most headroom first
    ledger.settle(grant.id, status="insufficient_quota", now=0.0)
    for step in range(5):
        grant = ledger.reserve("m", 10, 0.0, now=float(step))
        assert grant.key == "ok"
        ledger.settle(grant.id, status="ok", now=float(step))
    assert ledger.snapshot()["keys"]["broke"]["disabled"].startswith("insufficient_quota")
    only_broke = QuotaLedger(keys(("broke", 6000, 10**9)), now=0.0)
    only_broke.settle(only_broke.reserve("m", 1, 0, now=0).id, status="insufficient_quota", now=0)
    assert "no usable key" in only_broke.reserve("m", 1, 0, now=1).stop


def test_budget_stops_before_it_would_be_exceeded():
    ledger = QuotaLedger(keys(("a", 6000, 10**9)), budget_usd=1.0, now=0.0)
    spent = 0.0
    while True:
        grant = ledger.reserve("m", 10, 0.3, now=0.0)
        if grant.stop:
            break
        ledger.settle(grant.id, status="ok", cost_usd=0.3, now=0.0)
        spent += 0.3
    assert spent <= 1.0 and spent > 0.6 and grant.stop.startswith("budget")


def test_concurrency_limit_and_model_routing():
    ledger = QuotaLedger([KeyLimits(name="a", rpm=6000, tpm=10**9, max_concurrent=2, models=("gpt-4",)),
                          KeyLimits(name="b", rpm=6000, tpm=10**9, max_concurrent=2)], now=0.0)
    grants = [ledger.reserve("gpt-3.5-turbo", 1, 0, now=0.0) for _ in range(2)]
    assert {g.key for g in grants} == {"b"}
    busy = ledger.reserve("gpt-3.5-turbo", 1, 0, now=0.0)
    assert busy.id is None and busy.wait_s > 0 and busy.stop is None  # at the limit: come back soon
    ledger.settle(grants[0].id, status="ok", now=0.1)
    assert ledger.reserve("gpt-3.5-turbo", 1, 0, now=0.1).key == "b"
    assert ledger.reserve("gpt-4", 1, 0, now=0.1).key == "a"


def test_server_headers_lower_our_headroom():
    ledger = QuotaLedger(keys(("a", 600, 10**9)), now=0.0)
    grant = ledger.reserve("m", 10, 0.0, now=0.0)
    ledger.settle(grant.id, status="ok", remaining_requests=0, now=0.0)
    assert ledger.reserve("m", 10, 0.0, now=0.0).wait_s >= 0.1  # the server's window is full: one refill
    # a header is as old as the call's admission: what refilled since counts, so a stale "0 left" read
    # late does not hold the lane back twice
    late = QuotaLedger(keys(("a", 600, 10**9)), now=0.0)
    grant = late.reserve("m", 10, 0.0, now=0.0)
    late.settle(grant.id, status="ok", remaining_tokens=0, remaining_requests=0, now=0.5)
    assert late.reserve("m", 10, 0.0, now=0.5).wait_s == 0.0


def test_models_with_their_own_limits_pace_separately_on_one_key():
    """OpenAI limits each model of a key separately: gpt-4's small lane must neither slow gpt-3.5 down
    nor be exceeded, and models without their own limits share the key-level lane."""
    from soulray.llm.broker import LaneLimits

    key = KeyLimits(name="a", rpm=600, tpm=10**9, max_concurrent=100,
                    model_limits=(("gpt-4", LaneLimits(rpm=60, tpm=10**9, max_concurrent=100)),))
    ledger = QuotaLedger([key], now=0.0)
    gpt4 = drive(ledger, 120.0, model="gpt-4")["a"]
    assert max_in_window(gpt4) <= 60 and len(gpt4) >= 0.95 * 60 * 2
    fresh = QuotaLedger([key], now=0.0)
    drive(fresh, 60.0, model="gpt-4")  # gpt-4 exhausted its lane…
    assert fresh.reserve("gpt-3.5-turbo", 10, 0.0, now=60.0).wait_s == 0.0  # …the shared lane is untouched
    shared = QuotaLedger([key], now=0.0)
    turbo = drive(shared, 60.0, model="gpt-3.5-turbo")["a"]
    other = drive(shared, 60.0, model="gpt-4o-mini", start_at=30.0)["a"]  # the same shared lane: it waits
    assert max_in_window(sorted(turbo + other)) <= 600


def test_snapshot_totals_per_key_and_per_model():
    ledger = QuotaLedger(keys(("a", 6000, 10**9), ("b", 6000, 10**9)), now=0.0)
    for step, model in enumerate(["gpt-4", "gpt-3.5-turbo", "gpt-3.5-turbo"]):
        grant = ledger.reserve(model, 10, 0.0, now=float(step))
        ledger.settle(grant.id, status="ok", prompt_tokens=7, completion_tokens=3, cost_usd=0.5, now=float(step))
    snapshot = ledger.snapshot()
    assert snapshot["models"]["gpt-3.5-turbo"]["ok"] == 2 and snapshot["models"]["gpt-4"]["completion_tokens"] == 3
    assert sum(k["requests"] for k in snapshot["keys"].values()) == 3
    assert sum(k["models"].get("gpt-3.5-turbo", {}).get("cost_usd", 0) for k in snapshot["keys"].values()) == 1.0
    assert snapshot["spent_usd"] == 1.5


def test_429s_of_calls_already_in_flight_are_one_burst_not_repeats():
    """A burst refuses every call in flight at once. Those 429s are echoes of one refusal (the calls
    were made before we knew): one back-off, not eight escalating ones. A call made after the back-off
    and refused again is a repeat: that one cools the lane longer."""
    ledger = QuotaLedger(keys(("a", 6000, 10**9)), now=0.0)
    in_flight = [ledger.reserve("m", 10, 0.0, now=0.0) for _ in range(8)]
    for grant in in_flight:  # without Retry-After: back off 1 s
        ledger.settle(grant.id, status="rate_limited", now=0.1)
    retry = ledger.reserve("m", 10, 0.0, now=0.1)
    assert 0.9 <= retry.wait_s <= 1.0  # eight 429s would have meant minutes
    ledger.settle(retry.id, status="rate_limited", now=retry.wait_s + 0.2)  # refused again after waiting
    assert ledger.reserve("m", 10, 0.0, now=retry.wait_s + 0.2).wait_s >= 2.0  # 2 s × 1.5: longer
    assert ledger.snapshot()["keys"]["a"]["rate_limited"] == 9  # every 429 still counted


def test_a_refund_never_lifts_a_bucket_above_its_capacity():
    """An over-estimate refunded after the bucket has refilled must not leave it holding more than its
    burst: two calls of 700 on a 1,000-token bucket cannot both start at once (issue 18)."""
    ledger = QuotaLedger(keys(("a", 10_000, 100_000)), now=0.0)  # token bucket: capacity 1,000
    grant = ledger.reserve("m", 500, 0.0, now=0.0)
    ledger.settle(grant.id, status="ok", prompt_tokens=0, now=10.0)  # refilled long ago, then refunded 500
    first, second = ledger.reserve("m", 700, 0.0, now=10.0), ledger.reserve("m", 700, 0.0, now=10.0)
    assert first.wait_s == 0.0 and second.wait_s > 0.2


def test_repeated_429s_stretch_a_retry_after_at_most_twice():
    """A lane refused again and again (a charge it misjudges) must not cool down for minutes: the
    multiplier on Retry-After is bounded, so the lane keeps calling and its estimates keep improving."""
    ledger = QuotaLedger(keys(("a", 6000, 10**9)), now=0.0)
    now = 0.0
    for _ in range(20):
        grant = ledger.reserve("m", 10, 0.0, now=now)
        now += grant.wait_s
        if grant.id is None:  # told to come back: do
            grant = ledger.reserve("m", 10, 0.0, now=now)
            now += grant.wait_s
        ledger.settle(grant.id, status="rate_limited", retry_after_s=2.0, now=now)
    assert ledger.reserve("m", 10, 0.0, now=now).wait_s <= 4.0 + 1e-9  # was 2 × (1 + 0.5 × 19) = 21 s


def test_a_429_lowers_the_bucket_to_what_the_server_has_left():
    ledger = QuotaLedger(keys(("a", 6000, 100_000)), now=0.0)
    grant = ledger.reserve("m", 800, 0.0, now=0.0)
    ledger.settle(grant.id, status="rate_limited", retry_after_s=0.1, remaining_tokens=0, now=0.0)
    # the server had nothing left: the next call waits until the bucket has refilled (it is smaller than
    # 800 tokens and the slack: all of it), and the lane now starts calls later than its bucket allows by
    # what the server said it lacked (a paced call was refused: they arrive later than planned)
    assert ledger.keys["a"].lanes["*"].margin_s == pytest.approx(0.1)
    assert ledger.reserve("m", 800, 0.0, now=0.0).wait_s == pytest.approx(1_000 / (99_000 / 60) + 0.1, rel=0.01)


def test_the_server_count_and_completion_lengths_are_learned():
    """Reservations are in the server's tokens (ratio learned from usage), and max_tokens comes from the
    completion lengths learned per prompt version and model: the configured cap until MIN_SAMPLES
    completions, then their 99th percentile with a margin."""
    ledger = QuotaLedger(keys(("a", 10**6, 10**9)), now=0.0)
    shape = CallShape(prompt_tokens=500, completion_tokens=400, max_tokens=4096, namespace="v1")
    first = ledger.reserve("m", 900, 0.0, now=0.0, shape=shape)
    assert (first.max_tokens, first.estimated_tokens) == (4096, 4096)  # nothing learned: the cap, reserved
    for step in range(CompletionLengths.MIN_SAMPLES):
        grant = first if step == 0 else ledger.reserve("m", 900, 0.0, now=float(step), shape=shape)
        # the server counts 1.5x ours; completions run half the prior guess (200 of our tokens)
        ledger.settle(grant.id, status="ok", prompt_tokens=750, completion_tokens=300, own_completion_tokens=200,
                      finish_reason="stop", now=float(step))
    learned = ledger.reserve("m", 900, 0.0, now=30.0, shape=shape)
    budgeting = Budgeting()
    assert learned.max_tokens == math.ceil(400 * 0.5 * budgeting.margin * 1.5) + budgeting.slack
    assert learned.estimated_tokens == max(750 + 300, learned.max_tokens)  # the server's count, spread 0
    other = ledger.reserve("m", 900, 0.0, now=30.0, shape=CallShape(500, 400, 4096, namespace="v2"))
    assert other.max_tokens == 4096  # another prompt version has learned nothing yet
    again = ledger.reserve("m", 900, 0.0, now=30.0, shape=CallShape(500, 400, 4096, "v1", min_max_tokens=1000))
    assert again.max_tokens == 1000  # a re-ask after `length` asks for more
    ledger.settle(learned.id, status="ok", prompt_tokens=750, completion_tokens=learned.max_tokens,
                  own_completion_tokens=300, finish_reason="length", now=31.0)
    assert ledger.snapshot()["keys"]["a"]["cut_by_length"] == 1


def test_reset_headers_size_the_bucket_like_the_servers():
    """Remaining + reset × rate is the server's bucket: one-second slices of 100k TPM hold 1,667 tokens,
    a sliding minute far more (held to LARGEST_BURST of the minute)."""
    from soulray.llm.broker import LARGEST_BURST

    ledger = QuotaLedger(keys(("a", 6000, 100_000)), now=0.0)
    grant = ledger.reserve("m", 10, 0.0, now=0.0)
    ledger.settle(grant.id, status="ok", remaining_tokens=667, reset_tokens_s=0.6, now=0.0)
    assert ledger.keys["a"].lanes["*"].tokens.capacity == pytest.approx(1667)
    grant = ledger.reserve("m", 10, 0.0, now=1.0)
    ledger.settle(grant.id, status="ok", remaining_tokens=90_000, reset_tokens_s=59.0, now=1.0)
    assert ledger.keys["a"].lanes["*"].tokens.capacity == pytest.approx(100_000 * LARGEST_BURST)


def test_a_call_larger_than_the_bucket_waits_until_the_minute_has_room_for_it():
    """A sliding-minute server admits a call only if the minute has room for all of it; a bucket of 1%
    cannot tell, the lane's minute can."""
    ledger = QuotaLedger(keys(("a", 6000, 10_000)), now=0.0)
    for step in range(6):  # 9,000 tokens in the minute
        grant = ledger.reserve("m", 1_500, 0.0, now=step * 10.0)
        ledger.settle(grant.id, status="ok", prompt_tokens=1_500, now=step * 10.0 + grant.wait_s)
    big = ledger.reserve("m", 2_000, 0.0, now=55.0)
    # the bucket alone is full again at ~59 s; 2,000 more fit under 99% of the minute only once the
    # first call has left it (60 s, and the second the server may have seen it later)
    assert 55.0 + big.wait_s == pytest.approx(61.0)


def test_a_refund_never_moves_the_bucket_before_a_call_granted_after_it():
    """A call granted to start at 0.485 s drew the bucket then; a refund for the call before it (here it
    cost nothing) cannot give back room the later call already holds, or a third call is granted at the
    same start and both reach a one-second-slice server at once (one of them refused, again and again;
    issue 18)."""
    ledger = QuotaLedger(keys(("a", 10_000, 100_000)), now=0.0)  # tokens: capacity 1,000, 1,650 a second
    first = ledger.reserve("m", 800, 0.0, now=0.0)
    second = ledger.reserve("m", 800, 0.0, now=0.0)
    assert second.wait_s == pytest.approx(800 / 1_650)
    ledger.settle(first.id, status="ok", prompt_tokens=1, now=0.01)  # 799 over-estimated
    third = ledger.reserve("m", 800, 0.0, now=0.01)
    assert 0.01 + third.wait_s >= second.wait_s + 800 / 1_650 - 1e-9  # once the second's draw refilled


def test_the_slack_follows_the_learned_deviation_of_the_estimates():
    """Once completion lengths are learned, a call waits for its reservation plus a slack for the error
    of the estimates not yet settled (SLACK_Z deviations, less the one each reservation holds), not 40%
    of itself: with every completion the same length there is nothing to cover."""
    ledger = QuotaLedger(keys(("a", 10**6, 100_000)), now=0.0)  # tokens: capacity 1,000
    shape = CallShape(prompt_tokens=300, completion_tokens=400, max_tokens=4096, namespace="v1")
    for step in range(CompletionLengths.MIN_SAMPLES):
        grant = ledger.reserve("m", 0, 0.0, now=10.0 * step, shape=shape)
        ledger.settle(grant.id, status="ok", prompt_tokens=300, completion_tokens=200, own_completion_tokens=200,
                      finish_reason="stop", now=10.0 * step + 5)
    lane = ledger.keys["a"].lanes["*"]
    first = ledger.reserve("m", 0, 0.0, now=500.0, shape=shape)
    assert first.estimated_tokens == 500 and lane.slack(500, 0.0) == 0.0
    second = ledger.reserve("m", 0, 0.0, now=500.0, shape=shape)
    # the bucket (1,000) held 500 after the first: the second starts at once (40% more would have waited)
    assert second.wait_s == 0.0
    assert lane.slack(500, 50.0) == pytest.approx(2.3 * 50 - 50)  # one deviation is already reserved


def test_the_requests_bucket_follows_the_servers_less_one_and_catches_up_one():
    """The requests bucket grows with the server's (remaining + reset × rate), keeping one request in
    reserve and holding at most one request more than 1% of the minute: a server slicing 120 RPM into
    2 a second leaves it at 1.2, a sliding minute lets it catch up one request."""
    ledger = QuotaLedger(keys(("a", 120, 10**9)), now=0.0)
    lane_requests = lambda: ledger.keys["a"].lanes["*"].requests.capacity  # noqa: E731
    grant = ledger.reserve("m", 10, 0.0, now=0.0)
    ledger.settle(grant.id, status="ok", prompt_tokens=10, remaining_requests=1, reset_requests_s=0.5, now=0.1)
    assert lane_requests() == pytest.approx(1.2)
    grant = ledger.reserve("m", 10, 0.0, now=10.0)
    ledger.settle(grant.id, status="ok", prompt_tokens=10, remaining_requests=100, reset_requests_s=59.0, now=10.1)
    assert lane_requests() == pytest.approx(2.2)


def test_a_call_holding_the_tokens_past_a_requests_turn_goes_to_a_key_bound_by_tokens():
    """Typical calls of ~900 tokens fill a 60 RPM / 100k TPM key's requests first (1,667 tokens a
    request) and a 240 RPM one's tokens first. Against one-second slices, a 3,000-token call holds the
    first key's tokens for 1.8 s, past its one-second turn: it goes to the second, which only spends the
    tokens it would anyway."""
    ledger = QuotaLedger(keys(("b", 60, 100_000), ("c", 240, 100_000)), now=0.0)
    for now in (0.0, 10.0):  # one call on each key: the servers' buckets are one-second slices
        grant = ledger.reserve("m", 900, 0.0, now=now)
        ledger.settle(grant.id, status="ok", prompt_tokens=900, remaining_tokens=767, reset_tokens_s=0.54,
                      now=now + 0.5)
    assert ledger.reserve("m", 3_000, 0.0, now=60.0).key == "c"
    assert ledger.reserve("m", 900, 0.0, now=120.0).key == "b"  # both free: the first by name


def test_the_start_margin_settles_where_few_calls_are_refused():
    """A paced call refused lengthens the lane's start margin by what the server lacked + 5 ms; each
    call that passes shortens it by 0.1 ms (before: by 2%, so it settled where 8% were refused)."""
    ledger = QuotaLedger(keys(("a", 6000, 10**9)), now=0.0)
    grant = ledger.reserve("m", 10, 0.0, now=0.0)
    ledger.settle(grant.id, status="rate_limited", retry_after_s=0.01, now=0.0)
    lane = ledger.keys["a"].lanes["*"]
    assert lane.margin_s == pytest.approx(0.015)
    now = 1.0
    for _ in range(10):
        grant = ledger.reserve("m", 10, 0.0, now=now)
        now += grant.wait_s
        ledger.settle(grant.id, status="ok", prompt_tokens=10, now=now)
    assert lane.margin_s == pytest.approx(0.014)


def test_coalesced_reservations_and_settlements_grant_and_account_as_one_by_one():
    """What a caller's BrokerLink sends together (reserve_many, settle_many) is granted and accounted
    exactly as the same requests sent one by one: same keys, waits, max_tokens, buckets and totals,
    through learning, a 429 and keys that make calls wait."""
    shape = CallShape(prompt_tokens=500, completion_tokens=400, max_tokens=4096, namespace="v1")
    one, many = (QuotaLedger(keys(("a", 600, 200_000), ("b", 300, 90_000)), now=0.0) for _ in range(2))
    now, open_one, open_many = 0.0, [], []
    for step in range(60):
        now += 0.25
        requests = [("m", 900, 0.001, shape)] * (1 + step % 4)
        grants = many.reserve_many(requests, now=now)
        assert grants == [one.reserve(m, t, c, now=now, shape=s) for m, t, c, s in requests]
        open_one += [g.id for g in grants if g.id is not None]
        open_many += [g.id for g in grants if g.id is not None]
        settling = len(open_many) // 2
        outcomes = [{"status": "rate_limited", "retry_after_s": 1.0, "remaining_tokens": 0, "reset_tokens_s": 0.5}
                    if (step + index) % 17 == 0 else
                    {"status": "ok", "prompt_tokens": 700, "completion_tokens": 250 + 10 * (index % 5),
                     "own_completion_tokens": 180 + 7 * (index % 5), "finish_reason": "stop", "cost_usd": 0.001}
                    for index in range(settling)]
        many.settle_many(list(zip(open_many[:settling], outcomes, strict=True)), now=now)
        for reservation_id, outcome in zip(open_one[:settling], outcomes, strict=True):
            one.settle(reservation_id, **outcome, now=now)
        del open_one[:settling], open_many[:settling]
    assert one.snapshot() == many.snapshot() and one.snapshot()["models"]["m"]["ok"] > 20
    for name in ("a", "b"):
        for lane in ("*",):
            assert one.keys[name].lanes[lane].tokens == many.keys[name].lanes[lane].tokens


def test_completion_lengths_kept_as_they_come_match_a_summary_from_scratch():
    """The running sums and sorted samples (kept per add, issue 22) give what summing and sorting the
    last KEPT samples gives, past the point where old samples leave."""
    lengths = CompletionLengths()
    shares = [0.3 + ((step * 7919) % 101) / 97 for step in range(CompletionLengths.KEPT * 3 + 17)]
    for count, share in enumerate(shares, 1):
        lengths.add(share)
        if count % 97 == 0 or count == len(shares):
            kept = shares[:count][-CompletionLengths.KEPT:]
            mean = sum(kept) / len(kept)
            deviation = math.sqrt(sum((x - mean) ** 2 for x in kept) / len(kept))
            assert lengths.spread() == pytest.approx(mean + deviation, rel=1e-9)
            assert lengths.deviation() == pytest.approx(deviation, rel=1e-9)
            ordered = sorted(kept)
            assert lengths.quantile(0.99) == ordered[math.ceil(0.99 * len(ordered)) - 1]


def test_the_broker_actor_leaves_no_task_events_in_the_gcs(ray_local):
    """Every reservation and settlement is a call to the named broker actor, millions in a long run; the
    GCS kept up to 100k task events of them (~370 MB of its memory at 500k rows, issue 22). The broker
    and the stage clock run with task events off; an actor with them on is the control that the GCS
    reports calls at all."""
    import time

    from ray._private.state import state

    from soulray.llm.broker import start_broker
    from soulray.pipeline import StageClock

    ray = ray_local

    @ray.remote(num_cpus=0)
    class Control:
        def ping(self) -> int:
            return 1

    namespace = ray.get_runtime_context().namespace
    broker = start_broker(f"events-{time.monotonic_ns()}", [KeyLimits(name="a", rpm=10**6, tpm=10**9, max_concurrent=10)], None,
                          namespace)
    clock, control = StageClock.start(), Control.remote()
    ray.get([broker.snapshot.remote() for _ in range(50)] + [control.ping.remote() for _ in range(50)]
            + [clock.actor.add.remote("stage", 0.1) for _ in range(50)])
    clock.totals()
    clock.stop()
    deadline = time.monotonic() + 30
    while True:  # task events reach the GCS about once a second
        names = [event.task_info.name for event in state._get_all_task_events()]  # from the GCS: no dashboard here
        if sum("Control.ping" in name for name in names) == 50 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum("Control.ping" in name for name in names) == 50, names[:20]
    assert not [name for name in names if "QuotaBroker" in name or "_Totals" in name]
    ray.kill(broker)


def test_the_floor_after_a_settled_call_is_the_scan_it_replaced():
    """_Minute.floor_after (a segment tree from _Minute.TREE_FROM calls in flight, issue 22) against
    the linear scan it replaced, over random grants, settlements and the minute's trim, in and out of
    the tree's range and through several layouts of it."""
    import random

    from soulray.llm.broker import _Minute

    def scanned(minute: _Minute, call: list[float]) -> float:
        floor, tokens_after = float("-inf"), 0.0
        for entry in reversed(minute.calls):
            if entry is call:
                break
            tokens_after += entry[1]
            floor = max(floor, entry[0] + tokens_after / rate)
        return floor

    chance = random.Random(7)
    rate, now = 1_000_000 / 60, 50_000.0
    minute = _Minute(rate, now)
    open_calls: list[list[float]] = []
    checked = relayouts = scanned_only = 0
    floors = minute.floors
    for step in range(12_000):
        now += chance.expovariate(60.0)  # ~60 grants a second: ~3,700 kept in the minute and its linger
        open_calls.append(minute.add(now + chance.uniform(0, 2), chance.randint(200, 3000)))
        relayouts += floors is not None and minute.floors is not floors
        floors = minute.floors
        scanned_only += floors is None
        most_open = 1500 if (step // 3000) % 2 == 0 else 20  # in flight up past the tree's threshold, then down
        while len(open_calls) > chance.randint(1, most_open):
            call = open_calls.pop(chance.randrange(len(open_calls)))
            expected = scanned(minute, call)
            assert minute.floor_after(call) == pytest.approx(expected, abs=1e-6) or expected == float("-inf")
            if expected == float("-inf"):
                assert minute.floor_after(call) == float("-inf")
            minute.settle(call, chance.randint(200, 3000), now)
            checked += 1
    assert checked > 10_000 and len(minute.calls) > 3000 and relayouts >= 1 and scanned_only > 1000
