"""The Batch API backend against the local server's /v1/files and /v1/batches, over HTTP with the real
openai client, without Ray: each lifecycle state, file splitting, the queue limit, resume after a kill at
each phase, expiry, re-asks in a later batch, failed lines, the budget, and no secret in any file."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import openai
import pyarrow.parquet as pq
import pytest

from soulray.fs import S3Config
from soulray.llm.batch import BatchDriver
from soulray.llm.batch_journal import BatchJournal
from soulray.llm.cache import ResponseCache, build_index
from soulray.llm.pricing import batch_price, cost_of
from soulray.llm.settings import ApiKey, BatchModeConfig
from soulray.offline.batches import BatchSettings
from soulray.offline.server import Faults, SimulatedKey
from soulray.rewrite.batch import rewrite_in_batches
from soulray.rewrite.parse import parse_completion
from soulray.rewrite.prompts import load_template
from soulray.rewrite.settings import RewriteConfig
from soulray.schema import record_id
from tests.conftest import DEMO_QA, PLANTED_API_KEY, TEST_API_KEYS

FAST = 86_400 / 2  # a 24 h window in 2 s; a batch (1 h) in ~0.1 s
NAMESPACE = load_template("soulchat-v1").version


class Killed(Exception):
    """The driver 'dies' here (raised from a hook); a new driver over the same store resumes."""


def units(count: int) -> list[dict]:
    rows = pq.read_table(DEMO_QA).to_pylist()
    return [{"record_id": record_id(row["question"], None, row["answer"]), "question": row["question"],
             "description": None, "answer": row["answer"], "reject_reason": None} for row in rows[:count]]


def key(env: str, **fields) -> ApiKey:
    return ApiKey(name=env.removeprefix("SOULRAY_TEST_").lower(), api_key_env=env, **fields)


def rewrite_config(url: str, keys: list[ApiKey] | None = None, budget_usd: float | None = None,
                   **batch) -> RewriteConfig:
    return RewriteConfig(base_url=url, keys=keys or [key("SOULRAY_TEST_KEY_A")], budget_usd=budget_usd,
                         mode="batch", batch=BatchModeConfig(poll_s=0.02, poll_max_s=0.1, **batch))


def run_driver(root: Path, config: RewriteConfig, rows: list[dict], hook=None):
    """One driver's life: rows through batches until done (or until a hook kills it)."""
    cache_uri = str(root / "cache")
    cache = ResponseCache(cache_uri, NAMESPACE, s3=S3Config(), index=build_index(cache_uri, NAMESPACE, s3=S3Config()))
    driver = BatchDriver(keys=config.keys, base_url=config.base_url, settings=config.batch,
                         journal=BatchJournal(cache_uri, NAMESPACE, s3=S3Config()), cache=cache,
                         price=batch_price(config.prices, config.batch), budget_usd=config.budget_usd, hook=hook)
    failures = rewrite_in_batches(rows, config=config, namespace=NAMESPACE, cache=cache, driver=driver)
    return failures, driver


def cached_entries(root: Path) -> list[dict]:
    return [row for path in (root / "cache" / NAMESPACE).glob("*.parquet") for row in pq.read_table(path).to_pylist()]


def assert_paid_once(server) -> None:
    paid_twice = [call for call, n in server.batches.paid.items() if n > 1]
    assert not paid_twice, f"{len(paid_twice)} requests paid twice"


def server_stats(server, env: str = "SOULRAY_TEST_KEY_A") -> dict:
    return server.batches.summary()[f"…{TEST_API_KEYS[env][-4:]}"]


def test_lifecycle_states_on_the_local_server(llm):
    # each state lasts 0.3 s or more, so that polling sees every one
    server, url = llm(batch=BatchSettings(time_scale=1000, validate_s=300, latency_s=600, finalize_s=300,
                                          window_s=2000, expire=(3,)))
    client = openai.OpenAI(api_key=TEST_API_KEYS["SOULRAY_TEST_KEY_A"], base_url=url, max_retries=0)
    messages = load_template("soulchat-v1").render("我最近很焦虑。", None, "慢慢来。试着深呼吸。你并不孤单。")

    def upload(lines: list[dict]) -> str:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        return client.files.create(file=("in.jsonl", content), purpose="batch").id

    def line(custom: str, model: str = "gpt-3.5-turbo") -> dict:
        return {"custom_id": custom, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "messages": messages, "seed": len(custom)}}

    def follow(batch_id: str) -> list[str]:
        seen = []
        while not seen or seen[-1] not in ("completed", "failed", "expired", "cancelled"):
            status = client.batches.retrieve(batch_id).status
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.005)
        return seen

    def create(file_id: str):
        return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    good = upload([line(f"r{i}") for i in range(4)])
    client.batches.retrieve(create(good).id)  # the client builds its response types on first use (~0.1 s)
    first = create(good)
    assert follow(first.id) == ["validating", "in_progress", "finalizing", "completed"]
    done = client.batches.retrieve(first.id)
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in output) == [f"r{i}" for i in range(4)] and done.error_file_id is None
    assert all(x["response"]["status_code"] == 200 and x["response"]["body"]["usage"]["prompt_tokens"] > 0 for x in output)

    expiring = create(good)  # the second batch runs out of its window: half answered, half batch_expired
    assert follow(expiring.id)[-1] == "expired"
    expired = client.batches.retrieve(expiring.id)
    assert (expired.request_counts.completed, expired.request_counts.failed) == (2, 2)
    errors = [json.loads(x) for x in client.files.content(expired.error_file_id).text.splitlines()]
    assert {x["error"]["code"] for x in errors} == {"batch_expired"}

    for lines, code in (([line("a"), line("a")], "duplicate_custom_id"),
                        ([line("a"), line("b", model="gpt-4")], "mixed_models"),
                        ([{**line("a"), "url": "/v1/embeddings"}], "invalid_url")):
        failed = create(upload(lines))
        assert follow(failed.id)[-1] == "failed"
        assert client.batches.retrieve(failed.id).errors.data[0].code == code

    cancelled = create(good)
    while client.batches.retrieve(cancelled.id).status == "validating":
        time.sleep(0.001)
    assert client.batches.cancel(cancelled.id).status == "cancelling"
    assert follow(cancelled.id)[-1] == "cancelled"

    # the queue: a key's live batches of a model hold at most queue_tokens prompt tokens
    queue = int(1.5 * 4 * server.config.count_messages(messages))  # `good` fits once, not twice
    server.batches.settings.queue_tokens = queue
    held, refused = create(good), create(good)
    assert follow(refused.id)[-1] == "failed"
    assert client.batches.retrieve(refused.id).errors.data[0].code == "token_limit_exceeded"
    assert follow(held.id)[-1] == "completed"
    assert server_stats(server)["failed_validation"]["token_limit_exceeded"] == 1
    other = openai.OpenAI(api_key=TEST_API_KEYS["SOULRAY_TEST_KEY_B"], base_url=url, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # a key sees only its own batches and files
        other.batches.retrieve(first.id)


def test_every_row_answered_once_with_reasks_in_later_batches(llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST), faults=Faults(malformed=0.3), seed=3)
    rows = units(40)
    failures, driver = run_driver(tmp_path, rewrite_config(url), rows)
    assert failures == {}
    assert_paid_once(server)
    entries = BatchJournal(str(tmp_path / "cache"), NAMESPACE, s3=S3Config()).load()
    attempts = Counter(custom.rsplit("-", 1)[1] for entry in entries for custom in entry.requests)
    assert attempts["0"] == 40 and attempts["1"] > 0  # re-asks went out, in batches after the first
    assert all(entry.state == "done" and entry.status == "completed" for entry in entries)
    first_batch = entries[0].requests
    assert all(custom.endswith("-0") for custom in first_batch)
    # every row ends with a parsed dialogue or with its re-asks spent; each call answered once in the cache
    cached = cached_entries(tmp_path)
    assert len(cached) == len({entry["call_key"] for entry in cached}) == sum(attempts.values())
    assert server_stats(server)["lines_answered"] == len(cached)
    usage = driver.usage()
    assert usage["keys"]["key_a"]["ok"] == len(cached)
    online = sum(cost_of(rewrite_config(url).prices, e["model"], e["prompt_tokens"], e["completion_tokens"])
                 for e in cached)
    assert usage["batches"]["spent_usd"] == pytest.approx(0.5 * online)
    # a row was asked again only after an answer that did not parse
    reasked = {entry["record_id"] for entry in cached if entry["call_key"] in reask_keys(entries)}
    malformed = {e["record_id"] for e in cached
                 if not parse_completion(e["completion"], e["finish_reason"], min_turns=8, max_turns=20).ok}
    assert reasked <= malformed


def reask_keys(entries) -> set[str]:
    return {call for entry in entries for custom, call in entry.requests.items() if not custom.endswith("-0")}


@pytest.mark.parametrize("limit", [{"max_requests_per_file": 7}, {"max_bytes_per_file": 3 * 4096}])
def test_files_are_split_at_the_limits(llm, tmp_path, limit):
    server, url = llm(batch=BatchSettings(time_scale=FAST, max_requests=limit.get("max_requests_per_file", 50_000),
                                          max_bytes=limit.get("max_bytes_per_file", 200 * 1024 * 1024)))
    failures, _ = run_driver(tmp_path, rewrite_config(url, **limit), units(30))
    assert failures == {}
    stats = server_stats(server)
    assert stats["failed_validation"] == {} and stats["created"] > 1
    requests, size = stats["largest_file"]
    assert requests <= limit.get("max_requests_per_file", 50_000) and size <= limit.get("max_bytes_per_file", 1 << 40)


def test_queue_limit_paces_submissions_over_several_keys(llm, tmp_path):
    queue = 6_000  # ~6 requests of the demo's prompts: 40 rows need several rounds on two keys
    server, url = llm(batch=BatchSettings(time_scale=FAST, queue_tokens=queue))
    keys = [key("SOULRAY_TEST_KEY_A", batch_queue_tokens=queue), key("SOULRAY_TEST_KEY_B", batch_queue_tokens=queue)]
    failures, driver = run_driver(tmp_path, rewrite_config(url, keys), units(40))
    assert failures == {}
    for env in ("SOULRAY_TEST_KEY_A", "SOULRAY_TEST_KEY_B"):
        stats = server_stats(server, env)
        assert stats["created"] >= 2 and stats["failed_validation"] == {}, stats  # shared, paced, never refused
        assert 0 < stats["max_queue"]["gpt-3.5-turbo"] <= queue
    assert_paid_once(server)


def test_a_provider_counting_more_tokens_refuses_then_the_driver_makes_room(llm, tmp_path):
    queue = 6_000
    server, url = llm(batch=BatchSettings(time_scale=FAST, queue_tokens=queue), token_counting=1.5)
    failures, driver = run_driver(tmp_path, rewrite_config(url, [key("SOULRAY_TEST_KEY_A", batch_queue_tokens=queue)]),
                                  units(20))
    assert failures == {}
    stats = server_stats(server)
    assert stats["failed_validation"].get("token_limit_exceeded", 0) >= 1  # refused whole, nothing paid
    assert stats["max_queue"]["gpt-3.5-turbo"] <= queue
    assert driver.usage()["batches"]["requeued"] > 0 and driver.usage()["batches"]["failed_lines"] == 0
    assert_paid_once(server)


@pytest.mark.parametrize("phase", ["uploaded", "created", "created-unjournaled", "polled", "downloaded"])
def test_resume_after_a_kill_at_each_phase(llm, tmp_path, phase):
    server, url = llm(batch=BatchSettings(time_scale=FAST / 4))
    config, rows = rewrite_config(url, max_requests_per_file=10), units(30)
    seen = Counter()

    def kill_at_second(at: str, entry) -> None:
        seen[at] += 1
        if at == phase.split("-")[0] and seen[at] == 2:
            if phase == "created-unjournaled":  # died after the provider created it, before the journal said so
                entry.state, entry.batch_id = "uploaded", None
                BatchJournal(str(tmp_path / "cache"), NAMESPACE, s3=S3Config()).save(entry)
            raise Killed(at)

    with pytest.raises(Killed):
        run_driver(tmp_path, config, rows, hook=kill_at_second)
    resumed_at = time.time()
    failures, driver = run_driver(tmp_path, config, rows)
    assert failures == {}
    assert_paid_once(server)
    # the rerun's spend is what it downloaded, not what the killed driver had already collected
    journal = BatchJournal(str(tmp_path / "cache"), NAMESPACE, s3=S3Config()).load()
    collected = [entry.cost_usd for entry in journal if entry.updated_at >= resumed_at]
    assert driver.spent_usd == pytest.approx(sum(collected))
    assert phase != "downloaded" or len(collected) < len(journal)
    # no batch was created twice from one file, and every batch the server made is in the journal
    created = Counter(batch.input_file_id for batch in server.batches.batches.values())
    assert max(created.values()) == 1
    journal = BatchJournal(str(tmp_path / "cache"), NAMESPACE, s3=S3Config()).load()
    assert {entry.batch_id for entry in journal} == set(server.batches.batches)
    assert len(cached_entries_keys(tmp_path)) == server_stats(server)["lines_answered"]
    # a third run finds everything answered: nothing is sent
    before = server_stats(server)["created"]
    run_driver(tmp_path, config, rows)
    assert server_stats(server)["created"] == before


def cached_entries_keys(root: Path) -> set[str]:
    return {entry["call_key"] for entry in cached_entries(root)}


def test_expiry_resubmits_only_the_requests_without_a_result(llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST, expire=(1,), expired_done_share=0.4))
    failures, driver = run_driver(tmp_path, rewrite_config(url), units(20))
    assert failures == {}
    first, second, *_ = BatchJournal(str(tmp_path / "cache"), NAMESPACE, s3=S3Config()).load()
    assert first.status == "expired"
    answered = {c for c, r in first.results.items() if r == "answered"}
    expired = {c for c, r in first.results.items() if r == "batch_expired"}
    assert len(answered) == 8 and len(expired) == 12
    assert set(second.requests) == expired  # only what had no result, in the next batch
    assert_paid_once(server)


def test_failed_lines_end_as_rejects_with_the_providers_code(llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST), faults=Faults(error_5xx=1.0))
    failures, driver = run_driver(tmp_path, rewrite_config(url, max_retries=2), units(5))
    assert len(failures) == 5 and {f.code for f in failures.values()} == {"server_error"}
    assert server_stats(server)["lines_failed"] == {"server_error": 15}  # 1 try + 2 retries each
    assert server_stats(server)["lines_answered"] == 0 and driver.usage()["batches"]["spent_usd"] == 0


def test_budget_is_reserved_at_submission_and_settled_from_the_output(llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST))
    probe, _ = run_driver(tmp_path / "probe", rewrite_config(url), units(4))
    per_row = sum(e["cost_usd"] for e in cached_entries(tmp_path / "probe")) / 4
    budget = per_row * 10
    failures, driver = run_driver(tmp_path / "run", rewrite_config(url, budget_usd=budget, max_requests_per_file=3),
                                  units(30))
    assert driver.spent_usd <= budget
    assert failures and {f.code for f in failures.values()} == {"budget_exhausted"}
    assert 0 < len(cached_entries(tmp_path / "run")) < 30


def test_a_stop_signal_mid_download_reads_counts_that_agree(llm, tmp_path):
    """A stop signal's drain runs on another thread while the main thread may be halfway through a
    batch's download: it read 150 paid and 100 saved (CI, 2026-12-02). It now waits for that batch to be
    flushed, so it reports what is in the cache."""
    import threading

    server, url = llm(batch=BatchSettings(time_scale=FAST))
    config, seen = rewrite_config(url, max_requests_per_file=10), []
    cache_uri = str(tmp_path / "cache")
    cache = ResponseCache(cache_uri, NAMESPACE, s3=S3Config(), index=build_index(cache_uri, NAMESPACE, s3=S3Config()))

    class MidDownload:  # the cache, with a stop signal arriving at the fifth answer of the first batch
        def __getattr__(self, name):
            return getattr(cache, name)

        def put(self, answer):
            cache.put(answer)
            if not seen and len(cache.pending) == 5:
                drain = threading.Thread(target=lambda: seen.append(driver.stopped(wait_s=30)))
                drain.start()
                drain.join(0.3)  # without waiting for the batch, the drain reads its counts here

    signalled = MidDownload()
    driver = BatchDriver(keys=config.keys, base_url=config.base_url, settings=config.batch,
                         journal=BatchJournal(cache_uri, NAMESPACE, s3=S3Config()), cache=signalled,
                         price=batch_price(config.prices, config.batch))
    failures = rewrite_in_batches(units(20), config=config, namespace=NAMESPACE, cache=signalled, driver=driver)
    assert failures == {}
    assert len(seen) == 1
    paid, saved, _ = seen[0]
    assert paid == saved == 10


def test_no_secret_in_request_files_or_journals(llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST))
    run_driver(tmp_path, rewrite_config(url), units(10))
    uploaded = b"".join(file.content for file in server.batches.files.values())
    assert uploaded and PLANTED_API_KEY.encode() not in uploaded
    journal = list((tmp_path / "cache" / "batches").rglob("*"))
    assert journal
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert PLANTED_API_KEY.encode() not in path.read_bytes(), path


def test_rate_limits_of_online_calls_do_not_apply_to_batches(llm, tmp_path):
    # a key whose online limits would take minutes for these rows: the batch pool is separate
    server, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey(rpm=1, tpm=100)},
                      batch=BatchSettings(time_scale=FAST))
    failures, _ = run_driver(tmp_path, rewrite_config(url), units(10))
    assert failures == {}


def test_take_file_stops_at_each_limit():
    from soulray.llm.batch import BatchCall, record_of, request_line, take_file

    calls = [BatchCall(call_key=f"k{i}", custom_id=f"{'ab' * 16}-{i % 3}", model="m",
                       body={"model": "m", "messages": [{"role": "user", "content": "你好" * 50}]},
                       prompt_tokens=100, reserved_usd=0.01) for i in range(10)]
    size = len(request_line(calls[0]))
    assert len(take_file(calls, max_requests=4, max_bytes=10**9, max_tokens=10**9, max_usd=None)[0]) == 4
    taken, content = take_file(calls, max_requests=100, max_bytes=3 * size + 1, max_tokens=10**9, max_usd=None)
    assert len(taken) == 3 and len(content) == 3 * size
    assert len(take_file(calls, max_requests=100, max_bytes=10**9, max_tokens=550, max_usd=None)[0]) == 5
    assert len(take_file(calls, max_requests=100, max_bytes=10**9, max_tokens=10**9, max_usd=0.025)[0]) == 2
    assert record_of(calls[4].custom_id) == "ab" * 16


def test_batch_price_per_model_or_by_factor():
    config = RewriteConfig(batch=BatchModeConfig(prices={"gpt-4": {"prompt_per_1k": 0.01, "completion_per_1k": 0.02}}))
    price = batch_price(config.prices, config.batch)
    assert price("gpt-4", 1000, 1000) == pytest.approx(0.03)
    online = config.prices["gpt-3.5-turbo"]
    assert price("gpt-3.5-turbo", 1000, 1000) == pytest.approx(0.5 * (online.prompt_per_1k + online.completion_per_1k))
