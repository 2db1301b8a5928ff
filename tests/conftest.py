"""Shared fixtures: one local Ray for the session, a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from soulray.fs import S3Config
from soulray.runtime import RayConfig

# Test S3 credentials, set before Ray starts so its workers inherit them the way cluster nodes get
# theirs from node setup. The secret is planted: tests grep outputs and logs for it.
PLANTED_SECRET = "plantedSECRET0123456789abcdefSOULRAYxyz9"
os.environ.setdefault("SOULRAY_TEST_S3_KEY_ID", "testing-key-id")
os.environ.setdefault("SOULRAY_TEST_S3_SECRET", PLANTED_SECRET)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# API keys for the local LLM server, by env var name as a real config names them; also planted.
PLANTED_API_KEY = "sk-soulray-planted-key-0123456789abcdef"
TEST_API_KEYS = {"SOULRAY_TEST_KEY_A": PLANTED_API_KEY, "SOULRAY_TEST_KEY_B": "sk-soulray-test-key-bbbbbbbbbbbb",
                 "SOULRAY_TEST_KEY_C": "sk-soulray-test-key-cccccccccccc",
                 "SOULRAY_TEST_KEY_BROKE": "sk-soulray-test-key-no-quota-left"}
for _name, _value in TEST_API_KEYS.items():
    os.environ.setdefault(_name, _value)

DEMO_QA = Path(__file__).parent.parent / "soulray" / "data" / "demo" / "qa.parquet"
# 2,000 real SMILECHAT rows (CC0), shipped with the tests: a fresh clone has nothing beside it.
SMILECHAT_SAMPLE = Path(__file__).parent / "data" / "smilechat-sample"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are chosen (ports taken one at a time
    can repeat: the kernel may hand a just-released port out again, and Ray refused a head whose GCS and
    agent had been given the same one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from soulray.runtime import init_ray

    init_ray(RayConfig(num_cpus=4))
    yield ray
    ray.shutdown()


@contextmanager
def moto_server(log_path: Path | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto S3 server on loopback (real HTTP; Ray workers reach it too); yields its endpoint."""
    port = free_port()
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if log_path:
            out.close()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_config(s3_endpoint) -> S3Config:
    return S3Config(endpoint_url=s3_endpoint, region="us-east-1", access_key_id_env="SOULRAY_TEST_S3_KEY_ID",
                    secret_access_key_env="SOULRAY_TEST_S3_SECRET")


@pytest.fixture
def s3_bucket(s3_config, request) -> str:
    """A fresh bucket per test, returned as its s3:// root."""
    from soulray.fs import boto3_client

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    name = f"{name}-{int(time.time() * 1000) % 100000}"
    boto3_client(s3_config).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def llm():
    """Start local OpenAI-compatible servers (real HTTP on loopback); stopped after the test."""
    from soulray.offline.server import LocalLLMServer, ServerConfig

    servers = []

    def start(**kwargs) -> tuple[LocalLLMServer, str]:
        server = LocalLLMServer(ServerConfig(**kwargs))
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()
