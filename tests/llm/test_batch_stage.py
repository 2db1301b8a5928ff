"""rewrite.mode batch inside the regenerate job, on a real local Ray, against the local server over HTTP:
every row accounted, half the online price, a rerun pays nothing and sends no batch, a dry run shows both
prices, `soulray batches` lists and cancels."""

from __future__ import annotations

import json

import pytest

from soulray.cli import main
from soulray.offline.batches import BatchSettings
from soulray.offline.server import Faults
from soulray.regenerate import DryRun, run, summary
from soulray.store import open_version
from tests.accounting import assert_accounted
from tests.llm.test_batch import (
    FAST,
    Killed,
    assert_paid_once,
    rewrite_config,
    run_driver,
    server_stats,
    units,
)
from tests.rewrite.test_stage import job, key

BATCH = ("rewrite.mode=batch", "rewrite.batch.poll_s=0.02", "rewrite.batch.poll_max_s=0.1",
         "rewrite.batch.max_requests_per_file=10")
KEYS = [key("SOULRAY_TEST_KEY_A"), key("SOULRAY_TEST_KEY_B")]


def test_batch_mode_costs_half_and_accounts_every_row(ray_local, llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST))
    result = run(job(tmp_path / "batch", url, KEYS, *BATCH, limit=40))
    version = open_version(result.version_uri)
    assert_accounted(version)
    usage = result.manifest.usage
    paid = sum(stats.ok for stats in usage.keys.values())
    answered = sum(server_stats(server, env)["lines_answered"] for env in ("SOULRAY_TEST_KEY_A", "SOULRAY_TEST_KEY_B"))
    assert paid == answered >= 40 and usage.batches.done == usage.batches.entries >= 4
    assert all(stats.ok > 0 for stats in usage.keys.values())  # both keys took batches
    assert f"  batches {usage.batches.entries} ({usage.batches.done} collected; completed " in summary(result)
    assert sum(server.stats_summary().get(label, {}).get("requests", 0) for label in server.stats_summary()) == 0
    assert sum(version.to_table()["cost_usd"].to_pylist()) <= result.manifest.cost_usd + 1e-9

    online = run(job(tmp_path / "online", url, KEYS, limit=40))
    assert online.manifest.counts.output_rows == result.manifest.counts.output_rows
    assert result.manifest.cost_usd == pytest.approx(0.5 * online.manifest.cost_usd, rel=0.02)

    again = run(job(tmp_path / "batch", url, KEYS, *BATCH, limit=40))  # a rerun: every answer is cached
    assert again.manifest.usage.paid_calls == 0
    assert again.manifest.counts == result.manifest.counts
    assert server_stats(server)["created"] + server_stats(server, "SOULRAY_TEST_KEY_B")["created"] == \
        usage.batches.entries


def test_failed_lines_are_rejects_with_the_providers_code(ray_local, llm, tmp_path):
    server, url = llm(batch=BatchSettings(time_scale=FAST), faults=Faults(error_5xx=0.15), seed=1)
    result = run(job(tmp_path, url, KEYS[:1], *BATCH, "rewrite.batch.max_retries=0", "rewrite.max_failure_share=1",
                     limit=30))
    assert_accounted(open_version(result.version_uri))
    reasons = result.manifest.counts.by_stage.get("rewrite", {})
    assert reasons and set(reasons) == {"batch_server_error"}


def test_dry_run_shows_online_and_batch_cost(ray_local, tmp_path):
    estimate = run(job(tmp_path, "http://127.0.0.1:9/v1", KEYS, "rewrite.dry_run=true", limit=20))
    assert isinstance(estimate, DryRun)
    totals = next(iter(estimate.estimate.values()))
    assert totals["batch_cost_usd"] == pytest.approx(0.5 * totals["cost_usd"])
    assert "with rewrite.mode batch" in summary(estimate)


def test_soulray_batches_lists_and_cancels(llm, tmp_path, capsys):
    # a slow provider: the batch is still running when the driver dies, so there is one to cancel
    server, url = llm(batch=BatchSettings(time_scale=FAST / 1000))  # a batch takes 83 s
    config = rewrite_config(url, max_requests_per_file=5)

    def die_after_the_second(at: str, entry) -> None:
        if at == "created" and len(server.batches.batches) == 2:
            raise Killed(at)

    with pytest.raises(Killed):
        run_driver(tmp_path / "smilechat-demo", config, units(10), hook=die_after_the_second)  # the demo's dataset
    args = ["batches", "--set", f"storage.root={tmp_path}", "--set", f"rewrite.base_url={url}",
            "--set", f"rewrite.keys={json.dumps([KEYS[0]])}"]
    assert main([*args, "--cancel"]) == 0
    listed = capsys.readouterr().out
    assert "2 batches of smilechat-demo" in listed and listed.count("cancelling") == 2, listed
    assert {server.batches._status(batch) for batch in server.batches.batches.values()} <= {"cancelling", "cancelled"}
    server.batches.settings.time_scale = FAST
    failures, _ = run_driver(tmp_path / "smilechat-demo", config, units(10))  # the next run collects, sends the rest
    assert failures == {}
    assert_paid_once(server)


@pytest.mark.slow
def test_sigkilled_batch_job_resumes_and_pays_no_request_twice(ray_local, llm, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from tests.rewrite.test_resume import ROOT, command

    server, url = llm(batch=BatchSettings(time_scale=FAST / 20))  # a batch takes ~1.7 s
    args = [*command(tmp_path, url), *[part for setting in BATCH for part in ("--set", setting)],
            "--set", "rewrite.batch.max_requests_per_file=50"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    job = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(server.batches.batches) < 2 and job.poll() is None:
        assert time.monotonic() < deadline, "the job sent no batch"
        time.sleep(0.02)
    assert job.poll() is None, job.stderr.read().decode()[-2000:]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert_accounted(open_version("latest", root=str(tmp_path), dataset="smilechat-demo"))
    assert_paid_once(server)
    created = [batch.input_file_id for batch in server.batches.batches.values()]
    assert len(created) == len(set(created))  # no file made into two batches


@pytest.mark.slow
def test_sigterm_in_batch_mode_reports_the_calls_paid_through_batches(ray_local, llm, tmp_path):
    """The stop line counted the broker's calls only: in batch mode it said 0 paid while batches had been
    collected. It now counts the batch driver's (downloaded, and flushed to the cache)."""
    import os
    import re
    import signal
    import subprocess
    import time

    from soulray.fs import S3Config
    from soulray.llm.cache import build_index
    from soulray.store import VersionStore
    from tests.rewrite.test_resume import ROOT, command

    server, url = llm(batch=BatchSettings(time_scale=FAST / 20))  # a batch takes ~1.7 s
    args = [*command(tmp_path, url), *[part for setting in BATCH for part in ("--set", setting)],
            "--set", "rewrite.batch.max_requests_per_file=50"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    job = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "smilechat-demo" / "cache" / "batches"
    deadline = time.monotonic() + 240
    while job.poll() is None and not any('"state": "done"' in path.read_text() for path in journal.rglob("*.json")):
        assert time.monotonic() < deadline, "the job collected no batch"
        time.sleep(0.05)
    assert job.poll() is None, job.stderr.read()[-2000:]
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr[-3000:]
    stopped = [line for line in stderr.splitlines() if line.startswith("soulray: ")]
    said = re.search(r"(\d+) rewrite calls were paid this run \(through batches\) and (\d+) answers are saved", stopped[0])
    cached = len(build_index(VersionStore(str(tmp_path), "smilechat-demo").cache_uri(), "soulchat-v1", s3=S3Config()))
    assert said and 0 < int(said[1]) == int(said[2]) <= cached, (stopped, cached)
    assert_paid_once(server)
