"""Kill the regenerate job midway (SIGKILL to its whole process group) and run the same command again:
it finishes, accounts for every row, and pays again only for calls in flight or answered in the last
second before the kill (the cache journals are written every second)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from soulray.fs import S3Config
from soulray.llm.cache import build_index
from soulray.offline.server import SimulatedKey
from soulray.schema import record_id
from soulray.store import VersionStore, open_version
from tests.accounting import assert_accounted
from tests.conftest import DEMO_QA, TEST_API_KEYS

ROOT = Path(__file__).resolve().parents[2]
ACTORS, CONCURRENCY = 2, 8


def command(root: Path, url: str) -> list[str]:
    keys = [{"name": "a", "api_key_env": "SOULRAY_TEST_KEY_A", "rpm": 100_000, "tpm": 10**8}]
    return [sys.executable, str(ROOT / "jobs" / "regenerate.py"), "--config", "soulray/configs/demo.yaml",
            "--set", f"storage.root={root}", "--set", f"rewrite.base_url={url}", "--set", f"rewrite.keys={json.dumps(keys)}",
            "--set", f"rewrite.actors={ACTORS}", "--set", f"rewrite.concurrency_per_actor={CONCURRENCY}",
            "--set", "rewrite.batch_size=8",
            # every row reaches the rewrite (the demo holds one near-duplicate pair that dedup would drop)
            "--set", "filters.source=[]", "--set", "filters.dialogue=[]",
            "--set", "dedup.source.enabled=false", "--set", "dedup.dialogue.enabled=false"]


@pytest.mark.slow
def test_killed_job_resumes_and_pays_only_for_calls_in_flight(ray_local, llm, tmp_path):
    server, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey()}, latency_ms=(300.0, 600.0))
    paid = lambda: server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]].completed  # noqa: E731
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    job = subprocess.Popen(command(tmp_path, url), cwd=ROOT, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (TEST_API_KEYS["SOULRAY_TEST_KEY_A"] not in server.stats or paid() < 90) and job.poll() is None:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    assert job.poll() is None, job.stderr.read().decode()[-2000:]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(3)  # calls already sent still reach the server and are paid
    paid_before = paid()
    assert paid_before < 300  # really killed midway

    rerun = subprocess.run(command(tmp_path, url), cwd=ROOT, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    version = open_version("latest", root=str(tmp_path), dataset="smilechat-demo")
    assert version.manifest.counts.input_rows == 300
    source = pq.read_table(DEMO_QA)
    assert_accounted(version, record_ids={record_id(q, "", a) for q, a in zip(
        source["question"].to_pylist(), source["answer"].to_pylist(), strict=True)})  # each row once
    recorded = len(build_index(VersionStore(str(tmp_path), "smilechat-demo").cache_uri(), "soulchat-v1",
                               s3=S3Config()))
    assert recorded >= 300  # every row's call is in the cache (re-asks of malformed answers add keys)
    # paid twice: in flight at the kill (actors × concurrency) plus answers of the last second before
    # it (each slot answers at most 1 s / 0.3 s); without the cache it would be everything paid before
    paid_twice = paid() - recorded
    print(f"paid before the kill {paid_before}, recorded {recorded}, paid in all {paid()}, paid twice {paid_twice}")
    assert paid_twice <= ACTORS * CONCURRENCY * (1 + 1 / 0.3) < paid_before


@pytest.mark.slow
def test_sigterm_stops_cleanly_saves_what_was_paid_and_the_rerun_pays_nothing_twice(ray_local, llm, tmp_path):
    """Issue 17: SIGTERM (cron timeouts, Kubernetes, `ray job stop`) mid-rewrite: the job waits for its
    calls in flight, writes every paid answer to the cache, says so in one line and exits 143, with no
    C++ stack dump or abort; the rerun finishes and pays for no call twice."""
    server, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey()}, latency_ms=(300.0, 600.0))
    paid = lambda: server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]].completed  # noqa: E731
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    job = subprocess.Popen(command(tmp_path, url), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while (TEST_API_KEYS["SOULRAY_TEST_KEY_A"] not in server.stats or paid() < 40) and job.poll() is None:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    assert job.poll() is None, job.stderr.read()[-2000:]
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr[-3000:]
    for noise in ("SIGTERM received at time", "core dumped", "Aborted", "Traceback", "logging.cc"):
        assert noise not in stderr, stderr[-3000:]
    stopped = [line for line in stderr.splitlines() if line.startswith("soulray: ")]
    assert len(stopped) == 1 and stopped[0].startswith("soulray: stopped by SIGTERM: "), stderr[-3000:]
    said = re.search(r"(\d+) rewrite calls were paid this run and (\d+) answers are saved", stopped[0])
    assert said and int(said[1]) == int(said[2]) == paid() < 300, (stopped, paid())
    store = VersionStore(str(tmp_path), "smilechat-demo")
    assert store.latest() is None  # nothing published
    assert len(build_index(store.cache_uri(), "soulchat-v1", s3=S3Config())) == paid()  # every paid answer kept

    rerun = subprocess.run(command(tmp_path, url), cwd=ROOT, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert_accounted(open_version("latest", root=str(tmp_path), dataset="smilechat-demo"))
    assert len(build_index(store.cache_uri(), "soulchat-v1", s3=S3Config())) == paid()  # no call paid twice
