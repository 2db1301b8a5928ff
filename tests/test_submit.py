"""The cluster path, for real: a local Ray head plus a second node started with `ray start`, the
regenerate job submitted through `make submit` (the Jobs API), sources read from and the version
published to a loopback S3, the LLM on a local server. Secrets reach the nodes only through their
environment, as cluster.yaml's node setup gives them; a planted key must not appear in the job's
metadata, its logs, Ray's logs or anything written to S3."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from soulray.fs import boto3_client
from soulray.offline.server import SimulatedKey
from soulray.store import open_version
from tests.conftest import PLANTED_API_KEY, PLANTED_SECRET, TEST_API_KEYS, free_ports

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


AGENT_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
               "runtime-env-agent-port")


class LocalCluster:
    """`ray start --head` plus one worker node, in a temp dir of their own, so stopping it kills only its
    processes (`ray stop` would kill every Ray on the machine, this test session's included)."""

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: Ray's socket paths are limited
        # every port of both nodes chosen at once, so no two are the same
        self.gcs_port, self.dashboard_port, *self.agent_ports = free_ports(2 + 2 * len(AGENT_PORTS))
        # token authentication on, as a cluster reachable by anyone else should be; every `ray` command
        # and the Jobs API client below present the token
        self.token = secrets.token_hex(32)
        (self.temp / "auth_token").write_text(self.token)
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.temp / "auth_token")}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        self._ray("start", "--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                  "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={self.temp}",
                  "--disable-usage-stats", *self._agent_ports(0))
        self._ray("start", f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=2", *self._agent_ports(1))
        deadline = time.monotonic() + 120
        while True:  # the Jobs API is served by the dashboard, which comes up after `ray start` returns
            try:
                request = urllib.request.Request(f"{self.address}/api/version",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                assert time.monotonic() < deadline, "the dashboard never came up"
                time.sleep(1)

    def _agent_ports(self, node: int) -> list[str]:
        """Each node's agents on free ports: the defaults (52365 for the agent that accepts jobs) are
        taken by any other Ray on this machine, and a head whose agent cannot bind accepts no job."""
        ports = self.agent_ports[node * len(AGENT_PORTS):(node + 1) * len(AGENT_PORTS)]
        return [f"--{name}={port}" for name, port in zip(AGENT_PORTS, ports, strict=True)]

    def _ray(self, *args: str) -> None:
        done = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"ray {args[0]} {args[1]} failed:\n{(done.stdout + done.stderr)[-3000:]}"

    def stop(self) -> None:
        for _ in range(3):
            mine = [p for p in psutil.process_iter(["cmdline"]) if self._ours(p)]
            for process in mine:
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            if not mine:
                break
            time.sleep(1)
        shutil.rmtree(self.temp, ignore_errors=True)

    def _ours(self, process: psutil.Process) -> bool:
        try:
            line = " ".join(process.info["cmdline"] or [])
        except psutil.Error:
            return False
        return str(self.temp) in line or f"127.0.0.1:{self.gcs_port}" in line

    def submit(self, config_args: list[str], runtime_env: dict | None = None) -> tuple[str, str]:
        """`make submit`, as the README documents it; returns (job id, what it printed)."""
        args = " ".join(f"--set '{arg}'" for arg in config_args)
        extra = ["RAY_JOB_EXTRA=--runtime-env-json '" + json.dumps(runtime_env) + "'"] if runtime_env else []
        deadline = time.monotonic() + 300
        while True:  # the head's job agent starts a little after the dashboard answers
            done = subprocess.run(["make", "-s", "submit", f"RAY_ADDRESS={self.address}", f"ARGS={args}", *extra],
                                  cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600)
            output = done.stdout + done.stderr
            if "No available agent to submit job" not in output or time.monotonic() > deadline:
                break
            time.sleep(2)
        match = re.search(r"(raysubmit_\w+)", output)
        assert match, output[-3000:]
        return match.group(1), output

    def job_info(self, job_id: str):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"}).get_job_info(job_id)


@pytest.fixture
def cluster():
    local = LocalCluster()
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.mark.slow
def test_submitted_job_publishes_to_s3_and_leaks_no_secret(cluster, llm, s3_config, s3_bucket):
    _, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey()})
    config_args = [f"storage.root={s3_bucket}/corpus", f"s3.endpoint_url={s3_config.endpoint_url}",
                   "s3.region=us-east-1", "s3.access_key_id_env=SOULRAY_TEST_S3_KEY_ID",
                   "s3.secret_access_key_env=SOULRAY_TEST_S3_SECRET", f"rewrite.base_url={url}",
                   "rewrite.keys=[{name: a, api_key_env: SOULRAY_TEST_KEY_A}]", "limit=60"]
    job_id, output = cluster.submit(config_args)
    info = cluster.job_info(job_id)
    assert info.status == "SUCCEEDED", output[-3000:]
    version = open_version("latest", root=f"{s3_bucket}/corpus", dataset="smilechat-demo", s3=s3_config, verify=True)
    counts = version.manifest.counts
    assert counts.input_rows == 60 == counts.output_rows + counts.rejected_rows and counts.output_rows > 0

    texts = [output, json.dumps(info.__dict__, default=str)]
    # every file Ray wrote (logs of the head, the worker node, the job driver, its workers, the dashboard),
    # less the unpacked copy of our working dir (its tests/conftest.py holds the planted values)
    texts += [path.read_text(errors="replace") for path in cluster.temp.rglob("*")
              if path.is_file() and path.stat().st_size < 50_000_000
              and not {"sockets", "runtime_resources"} & set(path.parts)]
    assert any("regenerate" in text for text in texts[2:])  # the job's own logs are among them
    client = boto3_client(s3_config)
    bucket = s3_bucket.removeprefix("s3://")
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        texts.append(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("latin-1"))
    for secret in (PLANTED_API_KEY, PLANTED_SECRET):
        assert not [text[:120] for text in texts if secret in text]


@pytest.mark.slow
def test_a_key_passed_in_runtime_env_is_refused(cluster, llm, tmp_path):
    """Ray shows runtime_env env_vars on the dashboard and keeps them in job metadata: the job refuses
    to run with a secret that came that way (the value here is a throwaway, not a planted one)."""
    _, url = llm()
    job_id, output = cluster.submit([f"storage.root={tmp_path}", f"rewrite.base_url={url}",
                                     "rewrite.keys=[{name: b, api_key_env: SOULRAY_DEMO_LEAKED_KEY}]", "limit=5"],
                                    runtime_env={"env_vars": {"SOULRAY_DEMO_LEAKED_KEY": "throwaway-value"}})
    assert cluster.job_info(job_id).status == "FAILED"
    assert "SOULRAY_DEMO_LEAKED_KEY came through the job's runtime_env env_vars" in output
