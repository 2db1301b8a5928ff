"""The quota ledger, with time passed in: pacing, Retry-After, key rotation, quotas, budgets."""

from soulray.rewrite.broker import KeyLimits, QuotaLedger


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
    from soulray.rewrite.broker import LaneLimits

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
