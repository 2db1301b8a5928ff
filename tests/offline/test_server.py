"""The local OpenAI-compatible server, spoken to by the real `openai` client over HTTP."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from soulray.offline.server import Faults, SimulatedKey, _Window
from soulray.rewrite.parse import parse_completion
from soulray.rewrite.prompts import load_template


def prompt(text: str = "最近总是失眠，怎么办？") -> list[dict[str, str]]:
    return load_template("soulchat-v1").render(text, "", "失眠很折磨人。试着规律作息。睡前少看手机。也可以做放松练习。")


def test_models_and_a_parseable_rewrite(llm):
    _, url = llm()
    client = openai.OpenAI(base_url=url, api_key="anything", max_retries=0)
    assert "gpt-3.5-turbo" in [m.id for m in client.models.list().data]
    response = client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt(), seed=1)
    parsed = parse_completion(response.choices[0].message.content, response.choices[0].finish_reason)
    assert parsed.ok and parsed.messages[0]["content"].startswith("最近总是失眠")
    assert response.usage.prompt_tokens > 100 and response.usage.completion_tokens > 20
    again = client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt(), seed=1)
    assert again.choices[0].message.content == response.choices[0].message.content  # deterministic


def test_window_keeps_its_token_sum_as_events_enter_and_leave():
    window, limits = _Window(), SimulatedKey(rpm=1_000, tpm=100)
    for second in range(10):
        assert window.admit(float(second), 10, limits) == 0.0
    assert window.tokens == 100
    assert window.admit(10.0, 10, limits) == pytest.approx(50.0)  # until the event at 0 s leaves the window
    # 0 s has left, 90 + 25 > 100: the events at 1 s and 2 s must leave too, at 61 s and 62 s
    assert window.admit(60.5, 25, limits) == pytest.approx(1.5)
    assert window.admit(62.5, 25, limits) == 0.0  # 0, 1 and 2 s have left: 70 + 25 fits
    assert window.tokens == sum(tokens for _, tokens in window.events) == 95
    window.trim(200.0)
    assert window.tokens == 0 and not window.events


def test_rpm_limit_gives_429_with_retry_after_and_headers(llm):
    server, url = llm(keys={"k1": SimulatedKey(rpm=3)})
    client = openai.OpenAI(base_url=url, api_key="k1", max_retries=0)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="gpt-3.5-turbo", messages=prompt())
        assert int(raw.headers["x-ratelimit-limit-requests"]) == 3
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt())
    assert int(error.value.response.headers["retry-after"]) >= 1
    assert error.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    stats = list(server.stats_summary().values())[0]
    assert (stats["requests"], stats["completed"], stats["rate_limited"]) == (4, 3, 1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="unknown", max_retries=0).chat.completions.create(
            model="gpt-3.5-turbo", messages=prompt())


def test_tpm_limit(llm):
    _, url = llm(keys={"k": SimulatedKey(tpm=600)})
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        for _ in range(5):
            client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt())


def test_insufficient_quota_key(llm):
    _, url = llm(keys={"broke": SimulatedKey(insufficient_quota=True)})
    with pytest.raises(openai.RateLimitError) as error:
        openai.OpenAI(base_url=url, api_key="broke", max_retries=0).chat.completions.create(
            model="gpt-3.5-turbo", messages=prompt())
    assert error.value.body["code"] == "insufficient_quota"


@pytest.mark.parametrize("fault, check", [
    ("error_5xx", lambda outcome: isinstance(outcome, openai.InternalServerError)),
    ("timeout", lambda outcome: isinstance(outcome, openai.APITimeoutError)),
    ("malformed", lambda outcome: parse_completion(outcome.choices[0].message.content).reason == "no_role_prefix"),
    ("truncated", lambda outcome: outcome.choices[0].finish_reason == "length"),
    ("refusal", lambda outcome: parse_completion(outcome.choices[0].message.content).reason == "refusal"),
])
def test_injected_faults(llm, fault, check):
    _, url = llm(faults=Faults(**{fault: 1.0}, hang_s=2.0))
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=0.5)
    try:
        outcome = client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt())
    except openai.APIError as exc:
        outcome = exc
    assert check(outcome), outcome


def test_latency_and_concurrency(llm):
    server, url = llm(latency_ms=(200, 300))
    client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)

    async def many() -> None:
        await asyncio.gather(*(client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt(str(i)))
                               for i in range(20)))

    asyncio.run(many())
    assert list(server.stats_summary().values())[0]["completed"] == 20


def test_bursts_of_429_whatever_the_pacing(llm):
    """Every 3rd request (counted per key, from the end of the last burst) opens a burst: all of that
    key's requests in it get 429, the first burst with Retry-After = the time left, the next without;
    another key is not affected."""
    server, url = llm(keys={"k": SimulatedKey(), "other": SimulatedKey()},
                      faults=Faults(burst_every=3, burst_s=0.4, burst_retry_after=(True, False)))
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)

    def call() -> float | None:
        """None if served; else the Retry-After in seconds (0.0 when the 429 has none)."""
        try:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=prompt(), seed=7)
        except openai.RateLimitError as error:
            assert error.body["code"] == "rate_limit_exceeded"
            return float(error.response.headers.get("retry-after-ms", 0)) / 1000
        return None

    assert [call(), call()] == [None, None]
    first = [call(), call()]  # the 3rd request opens the burst; the 4th falls inside it
    assert all(0 < wait <= 0.401 for wait in first) and first[1] <= first[0], first
    openai.OpenAI(base_url=url, api_key="other", max_retries=0).chat.completions.create(
        model="gpt-3.5-turbo", messages=prompt())  # bursts are per key
    time.sleep(max(first))
    assert [call(), call(), call()] == [None, None, 0.0]  # the second burst: 429 without Retry-After
    time.sleep(0.45)
    assert call() is None
    bursts = server.stats["k"].bursts
    assert [b.retry_after for b in bursts] == [True, False]
    assert [len(b.refused) for b in bursts] == [2, 1] and len(set(bursts[0].refused)) == 1  # one call, twice
    stats = server.stats_summary()["…k"]
    assert (stats["requests"], stats["completed"], stats["rate_limited"], stats["burst_429"]) == (8, 5, 3, 3)
