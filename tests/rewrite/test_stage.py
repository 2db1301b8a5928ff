"""The rewrite stage inside the regenerate job, on a real local Ray, against the local server over HTTP."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.llm.pricing import cost_of
from soulray.offline.server import Faults, LocalLLMServer, SimulatedKey
from soulray.regenerate import run
from soulray.store import open_version
from tests.accounting import assert_accounted
from tests.conftest import PLANTED_API_KEY, TEST_API_KEYS


def job(root: Path, url: str, keys: list[dict], *overrides: str, limit: int = 40) -> RegenerateConfig:
    return load_config(RegenerateConfig, DEMO_CONFIG, [
        f"storage.root={root}", f"rewrite.base_url={url}", f"rewrite.keys={json.dumps(keys)}", f"limit={limit}",
        "rewrite.actors=2", "rewrite.batch_size=8",
        # the rewrite alone: tests/filters and tests/dedup run the job with filters and dedup
        "filters.source=[]", "filters.dialogue=[]", "dedup.source.enabled=false", "dedup.dialogue.enabled=false",
        *overrides])


def key(env: str, **limits) -> dict:
    return {"name": env.removeprefix("SOULRAY_TEST_").lower(), "api_key_env": env, **limits}


def server_keys(**limits: SimulatedKey) -> dict[str, SimulatedKey]:
    return {TEST_API_KEYS[env]: value for env, value in limits.items()}


def stats_by_env(server: LocalLLMServer) -> dict[str, dict[str, int]]:
    by_label = server.stats_summary()
    return {env: by_label[f"…{value[-4:]}"] for env, value in TEST_API_KEYS.items() if f"…{value[-4:]}" in by_label}


def test_quotas_per_key_are_respected_and_shared(ray_local, llm, tmp_path):
    limits = {"SOULRAY_TEST_KEY_A": SimulatedKey(rpm=120), "SOULRAY_TEST_KEY_B": SimulatedKey(rpm=60),
              "SOULRAY_TEST_KEY_C": SimulatedKey(rpm=30, tpm=15_000)}
    server, url = llm(keys=server_keys(**limits))
    keys = [key(env, rpm=value.rpm, tpm=value.tpm) for env, value in limits.items()]
    result = run(job(tmp_path, url, keys, limit=45))
    assert result.manifest.counts.output_rows + result.manifest.counts.rejected_rows == 45
    stats = stats_by_env(server)
    assert sum(s["completed"] for s in stats.values()) >= 45  # every row called (re-asks may add some)
    assert all(stats[env]["completed"] > 0 for env in limits)  # load spread over every key
    for env, value in limits.items():  # the server's own log of what it served, per key
        served = server.stats[TEST_API_KEYS[env]]
        requests, tokens = served.max_in_window(60.0)
        assert requests <= value.rpm and tokens <= value.tpm
        # paced, not bursted: any 10 s holds at most a sixth of the minute's quota (+ the 1% burst, + 1), and
        # one second's pace more: the server counts arrivals, and a caller starved of CPU sends a call granted
        # at the end of one window in the next (23 of key A's 120 rpm in 10 s, twice in four runs at load 8)
        requests_10s, _ = served.max_in_window(10.0)
        assert requests_10s <= value.rpm / 6 + max(1, value.rpm * 0.01) + 1 + value.rpm / 60, (env, requests_10s)
    total = sum(s["requests"] for s in stats.values())
    assert sum(s["rate_limited"] for s in stats.values()) <= max(1, 0.01 * total)
    usage = result.manifest.usage.keys
    assert sum(k.ok for k in usage.values()) == sum(s["completed"] for s in stats.values())
    assert result.manifest.cost_usd > 0 and result.manifest.tokens["prompt"] > 0


def test_chaos_ends_as_output_or_reject_with_exact_accounting_and_rerun_pays_nothing(ray_local, llm, tmp_path):
    """Issue 10's LLM chaos at once: 10% 5xx, 5% timeouts, 10% malformed (and truncated, refusals), a key
    without quota, and bursts of 429 on each good key (every 15th request, 1 s, alternately with and
    without Retry-After). Every row ends published or rejected once; the manifest's usage per key is
    what the server counted; the broker backed off every burst; a rerun pays only for unfinished rows."""
    faults = Faults(error_5xx=0.1, timeout=0.05, malformed=0.1, truncated=0.05, refusal=0.03, hang_s=3.0,
                    burst_every=15, burst_s=1.0, burst_retry_after=(True, False))
    good = {"SOULRAY_TEST_KEY_A": SimulatedKey(), "SOULRAY_TEST_KEY_B": SimulatedKey()}
    server, url = llm(faults=faults, keys=server_keys(**good, SOULRAY_TEST_KEY_BROKE=SimulatedKey(insufficient_quota=True)))
    keys = [key("SOULRAY_TEST_KEY_BROKE", rpm=100_000), key("SOULRAY_TEST_KEY_A", rpm=3000),
            key("SOULRAY_TEST_KEY_B", rpm=3000)]
    # deliberate chaos: publish whatever share of rows survived it (the outage guard: tests/rewrite/test_outage.py)
    config = job(tmp_path, url, keys, "rewrite.timeout_s=1", "rewrite.max_reasks=2", "rewrite.batch_size=30",
                 "rewrite.max_failure_share=1", limit=60)
    result = run(config)
    version = open_version("latest", root=str(tmp_path), dataset="smilechat-demo")
    assert_accounted(version)
    counts = result.manifest.counts
    assert counts.input_rows == 60
    known = {"truncated", "no_role_prefix", "refusal", "retries_exhausted"}
    for stage, reasons in counts.by_stage.items():
        assert stage in ("rewrite", "parse") and set(reasons) <= known, counts
    data = version.to_table().to_pylist()
    assert max(row["attempts"] for row in data) > 1  # malformed completions were re-asked
    assert all(row["messages"][0]["role"] == "user" and row["messages"][-1]["role"] == "assistant" for row in data)

    usage = {name: stats.model_dump() for name, stats in result.manifest.usage.keys.items()}
    served = stats_by_env(server)
    assert usage["key_broke"]["disabled"].startswith("insufficient_quota") and usage["key_broke"]["ok"] == 0
    for env in [*good, "SOULRAY_TEST_KEY_BROKE"]:  # what we recorded per key is what the server counted
        mine, theirs = usage[key(env)["name"]], served[env]
        assert (mine["requests"], mine["ok"], mine["rate_limited"], mine["prompt_tokens"], mine["completion_tokens"]) \
            == (theirs["requests"], theirs["completed"], theirs["rate_limited"], theirs["prompt_tokens"],
                theirs["completion_tokens"]), (env, mine, theirs)
        paid = cost_of(config.rewrite.prices, "gpt-3.5-turbo", theirs["prompt_tokens"], theirs["completion_tokens"])
        assert mine["cost_usd"] == pytest.approx(paid)
    assert result.manifest.tokens["prompt"] == sum(s["prompt_tokens"] for s in served.values())

    bursts = [burst for env in good for burst in server.stats[TEST_API_KEYS[env]].bursts]
    assert {burst.retry_after for burst in bursts} == {True, False} and all(burst.refused for burst in bursts)
    # every 429 was a burst's (the keys' own limits are far away), and the broker recorded each one
    assert 0 < sum(usage[key(env)["name"]]["rate_limited"] for env in good) == sum(len(b.refused) for b in bursts)
    # backed off: a call refused in a burst went again only after the burst (Retry-After honoured, or
    # 1 s without one): a broker that ignored 429s would send it straight back into the same burst
    for burst in bursts:
        assert len(burst.refused) == len(set(burst.refused)), Counter(burst.refused).most_common(3)
    print(f"bursts {[(b.retry_after, len(b.refused)) for b in bursts]}, calls "
          f"{ {env: (s['requests'], s['rate_limited']) for env, s in served.items()} }, rejects {counts.by_stage}")

    first_calls = sum(s["requests"] for s in served.values())
    rerun = run(config)  # same sources, prompt, models: every completed call comes from the cache
    unfinished = sum(1 for r in version.to_table("rejects").to_pylist() if r["reason"] == "retries_exhausted")
    new_calls = sum(s["requests"] for s in stats_by_env(server).values()) - first_calls
    assert new_calls <= unfinished * (config.rewrite.max_retries + 1) * (config.rewrite.max_reasks + 1)
    assert rerun.manifest.counts.output_rows == counts.output_rows
    assert_accounted(open_version("latest", root=str(tmp_path), dataset="smilechat-demo"))


def test_cache_hits_mean_zero_calls_and_prompt_change_repays(ray_local, llm, tmp_path):
    server, url = llm(keys=server_keys(SOULRAY_TEST_KEY_A=SimulatedKey()))
    keys = [key("SOULRAY_TEST_KEY_A", rpm=100_000, tpm=10**8)]
    run(job(tmp_path, url, keys, limit=30))
    calls = stats_by_env(server)["SOULRAY_TEST_KEY_A"]["requests"]
    assert calls >= 30
    second = run(job(tmp_path, url, keys, limit=30))
    assert stats_by_env(server)["SOULRAY_TEST_KEY_A"]["requests"] == calls  # the server saw nothing new
    assert second.manifest.usage.keys["key_a"].requests == 0 and second.manifest.cost_usd == 0
    run(job(tmp_path, url, keys, "rewrite.prompt=smile-v1", limit=30))
    assert stats_by_env(server)["SOULRAY_TEST_KEY_A"]["requests"] >= calls + 30
    assert set(open_version("latest", root=str(tmp_path), dataset="smilechat-demo").to_table()["prompt_version"]
               .to_pylist()) == {"smile-v1"}


def test_budget_stop_rejects_the_rest_with_a_reason(ray_local, llm, tmp_path):
    _, url = llm(keys=server_keys(SOULRAY_TEST_KEY_A=SimulatedKey()))
    keys = [key("SOULRAY_TEST_KEY_A", rpm=100_000, tpm=10**8)]
    result = run(job(tmp_path, url, keys, "rewrite.budget_usd=0.005", "rewrite.models=[{name: gpt-4}]", limit=40))
    reasons = Counter({reason: n for stage in result.manifest.counts.by_stage.values() for reason, n in stage.items()})
    assert reasons["budget_exhausted"] > 0 and set(reasons) <= {"budget_exhausted"}
    assert result.manifest.cost_usd <= 0.005
    assert result.manifest.counts.input_rows == 40


def test_api_keys_never_reach_outputs_or_logs(ray_local, llm, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    _, url = llm(keys=server_keys(SOULRAY_TEST_KEY_A=SimulatedKey()))
    result = run(job(tmp_path, url, [key("SOULRAY_TEST_KEY_A", rpm=100_000, tpm=10**8)], limit=10))
    texts = [result.manifest.to_json().decode(), caplog.text, *capsys.readouterr()]
    texts += [path.read_text(errors="replace") for path in Path(tmp_path).rglob("*.json")]
    texts += [path.read_bytes().decode("latin-1") for path in Path(tmp_path).rglob("*.parquet")]
    ray_logs = Path("/tmp/ray/session_latest/logs")
    if ray_logs.exists():
        texts += [path.read_text(errors="replace") for path in ray_logs.rglob("*") if path.is_file()
                  and path.stat().st_size < 50_000_000]
    assert not [text[:80] for text in texts if PLANTED_API_KEY in text]


def test_per_model_limits_on_an_azure_style_key(ray_local, llm, tmp_path):
    """One Azure-style key (deployment in the path, `api-key` header, api-version) whose gpt-4 deployment
    has its own small limit: gpt-4 calls are paced to it while gpt-3.5 calls run on the key's limit."""
    server_key = SimulatedKey(rpm=6000, models={"gpt-4": SimulatedKey(rpm=60)})
    server, url = llm(keys=server_keys(SOULRAY_TEST_KEY_A=server_key))
    azure = key("SOULRAY_TEST_KEY_A", rpm=6000, base_url=url.removesuffix("/v1"), api_version="2024-10-21",
                model_limits={"gpt-4": {"rpm": 60, "tpm": 10**8}})
    config = job(tmp_path, url, [azure], "rewrite.models=[{name: gpt-4, share: 1}, {name: gpt-3.5-turbo, share: 1}]",
                 limit=30)
    result = run(config)
    assert result.manifest.counts.output_rows + result.manifest.counts.rejected_rows == 30
    served = server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]]
    gpt4_calls = sum(1 for _, _, lane in served.log if lane == "gpt-4")
    assert gpt4_calls >= 8 and sum(1 for _, _, lane in served.log if lane == "*") >= 8
    requests_10s, _ = served.max_in_window(10.0, lane="gpt-4")
    assert requests_10s <= 60 / 6 + 2  # paced at 1/s, not all at once
    assert served.rate_limited == 0
    models = result.manifest.usage.models
    assert models["gpt-4"].ok == gpt4_calls and models["gpt-3.5-turbo"].ok == len(served.log) - gpt4_calls


def test_a_rewrite_ending_with_the_client_is_repaired_with_one_call(ray_local, llm, tmp_path):
    """Issue 16: a completion that ends with the client's thanks was re-asked (up to 3 paid calls) and
    then rejected; now its trailing client turn is trimmed and the repair counted."""
    server, url = llm(faults=Faults(trailing_client=1.0))
    result = run(job(tmp_path, url, [key("SOULRAY_TEST_KEY_A")], limit=12))
    data = open_version("latest", root=str(tmp_path), dataset=result.manifest.dataset).to_table().to_pylist()
    assert result.manifest.counts.output_rows == 12 and len(data) == 12
    assert all(row["attempts"] == 1 and row["flags"] == ["repair:trailing_client"] for row in data)
    assert all(row["messages"][-1]["role"] == "assistant" for row in data)
    assert sum(stats["completed"] for stats in stats_by_env(server).values()) == 12  # no re-asks
    assert result.manifest.profile["flags"] == {"repair:trailing_client": 12}


def test_learned_max_tokens_and_the_reask_after_length(ray_local, llm, tmp_path):
    """max_tokens comes from the completions seen so far (here their median, no margin: about half are
    cut); a completion cut by `length` under that budget is asked again with twice the budget, paid for,
    counted in the manifest (cut_by_length), and the row ends complete. Issue 18."""
    server, url = llm(keys=server_keys(SOULRAY_TEST_KEY_A=SimulatedKey()))
    keys = [key("SOULRAY_TEST_KEY_A", rpm=100_000, tpm=10**8)]
    result = run(job(tmp_path, url, keys, "rewrite.max_tokens_quantile=0.5", "rewrite.max_tokens_margin=1.0",
                     "rewrite.concurrency_per_actor=4", limit=60))
    version = open_version("latest", root=str(tmp_path), dataset="smilechat-demo")
    assert_accounted(version)
    served = server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]]
    assert served.budgets[0] == 2048 and min(served.budgets) < 2048  # the cap, until lengths were learned
    usage = result.manifest.usage.keys["key_a"]
    assert usage.cut_by_length > 0
    assert usage.ok == served.completed and usage.completion_tokens == stats_by_env(server)[
        "SOULRAY_TEST_KEY_A"]["completion_tokens"]  # the cut completions were paid for and counted
    # every cut was asked again with a larger budget: more calls than rows and parse re-asks
    data, rejects = version.to_table().to_pylist(), version.to_table("rejects").to_pylist()
    asked = sum(row["attempts"] for row in data) + usage.cut_by_length
    assert served.completed == asked if not rejects else served.completed >= asked
    assert "truncated" not in {row["reason"] for row in rejects}  # no row lost to our own budget
