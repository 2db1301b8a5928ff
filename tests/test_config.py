from pathlib import Path

import pytest

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, config_hash, load_config
from soulray.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_config_loads():
    config = load_config(RegenerateConfig, DEMO_CONFIG)
    assert config.sources[0].path == "builtin:demo/qa.parquet"
    assert config.storage.root == "output"


def test_overrides_apply_with_types(tmp_path):
    config = load_config(RegenerateConfig, DEMO_CONFIG,
                         ["storage.root=s3://bucket/x", "storage.rows_per_shard=7", "sources.0.layout=wide",
                          "ray.num_cpus=8"])
    assert config.storage.root == "s3://bucket/x"
    assert config.storage.rows_per_shard == 7
    assert config.sources[0].layout == "wide"
    assert config.ray.num_cpus == 8


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "sources: [{path: a.parquet}]\nstorage: {rot: out}\n")
    with pytest.raises(ConfigError) as error:
        load_config(RegenerateConfig, path)
    assert "storage.rot: unknown key" in str(error.value)
    assert str(path) in str(error.value)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "sources: [{path: a.parquet}]\nstorage: {rows_per_shard: many}\n")
    with pytest.raises(ConfigError, match=r"storage\.rows_per_shard: .*many"):
        load_config(RegenerateConfig, path)


def test_missing_required_names_key(tmp_path):
    with pytest.raises(ConfigError, match="sources: required key is missing"):
        load_config(RegenerateConfig, write(tmp_path, "dataset: x\n"))


def test_bad_literal_in_list_names_index(tmp_path):
    path = write(tmp_path, "sources: [{path: a.parquet, layout: diagonal}]\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.layout"):
        load_config(RegenerateConfig, path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RegenerateConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RegenerateConfig, write(tmp_path, "sources: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(RegenerateConfig, write(tmp_path, "- a\n- b\n"))


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(RegenerateConfig, DEMO_CONFIG, ["storage.root"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(RegenerateConfig, DEMO_CONFIG, ["sources.5.path=x"])


@pytest.mark.parametrize("secret", ["sk-proj-abcdefghijklmnop1234", "AKIAIOSFODNN7EXAMPLE",
                                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"])
def test_secret_values_are_refused_without_echoing_them(tmp_path, secret):
    path = write(tmp_path, f"sources: [{{path: a.parquet}}]\ns3: {{access_key_id_env: {secret}}}\n")
    with pytest.raises(ConfigError) as error:
        load_config(RegenerateConfig, path)
    assert "looks like a secret" in str(error.value)
    assert secret not in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(RegenerateConfig, DEMO_CONFIG, [f"s3.access_key_id_env={secret}"])
    assert secret not in str(error.value)


def test_env_var_names_are_accepted_and_hash_is_stable():
    config = load_config(RegenerateConfig, DEMO_CONFIG, ["s3.access_key_id_env=MY_KEY_ID"])
    assert config.s3.access_key_id_env == "MY_KEY_ID"
    assert config_hash(config) == config_hash(load_config(RegenerateConfig, DEMO_CONFIG,
                                                          ["s3.access_key_id_env=MY_KEY_ID"]))
    assert config_hash(config) != config_hash(load_config(RegenerateConfig, DEMO_CONFIG))


def test_batch_mode_refuses_persona_and_the_quality_gate(tmp_path):
    """Batch mode answers only the rewrite calls through batches; persona and gate calls would end as
    rejects, so the combination is a config error naming both settings."""
    from soulray.config import RegenerateConfig

    base = {"sources": [{"path": str(tmp_path)}], "rewrite": {"mode": "batch"}}
    RegenerateConfig.model_validate(base)
    for extra in ({"rewrite": {"mode": "batch", "persona": {"enabled": True}}}, {"quality_gate": {"enabled": True}}):
        with pytest.raises(ValueError, match="rewrite.mode batch does not yet run"):
            RegenerateConfig.model_validate({**base, **extra})


def test_a_local_ray_gets_a_bounded_object_store_unless_told_otherwise(tmp_path):
    """The rows held for dedup fill whatever store there is (issue 22): a local Ray's defaults to 1 GB,
    less on a machine where Ray's own default (30% of the memory available) is less; a value set is used
    as set, and null leaves it to Ray."""
    from soulray.runtime import LOCAL_OBJECT_STORE_MB, local_object_store_bytes

    default = load_config(RegenerateConfig, DEMO_CONFIG).ray
    assert default.object_store_mb == LOCAL_OBJECT_STORE_MB == 1024
    gib = 1024 ** 3
    assert local_object_store_bytes(default.object_store_mb, chosen=False, available=16 * gib) == gib
    assert local_object_store_bytes(default.object_store_mb, chosen=False, available=2 * gib) == int(0.6 * gib)
    chosen = load_config(RegenerateConfig, DEMO_CONFIG, overrides=["ray.object_store_mb=4096"]).ray
    assert local_object_store_bytes(chosen.object_store_mb, chosen="object_store_mb" in chosen.model_fields_set,
                                    available=2 * gib) == 4 * gib
    left_to_ray = load_config(RegenerateConfig, DEMO_CONFIG, overrides=["ray.object_store_mb=null"]).ray
    assert local_object_store_bytes(left_to_ray.object_store_mb, chosen=True) is None


def test_the_local_ray_of_the_tests_has_that_store(ray_local):
    from soulray.runtime import local_object_store_bytes

    expected = local_object_store_bytes(1024, chosen=False)
    assert ray_local.cluster_resources()["object_store_memory"] == pytest.approx(expected, rel=0.05)


def test_the_local_ray_keeps_only_the_last_tasks_events(ray_local):
    """Ray's GCS keeps every task's events up to 100,000 tasks (~3.8 KB each: +185 MB over a 1M-row run,
    issue 22); a local Ray started by soulray keeps the last LOCAL_TASK_EVENTS."""
    from ray._raylet import Config

    from soulray.runtime import LOCAL_TASK_EVENTS

    assert Config.task_events_max_num_task_in_gcs() == LOCAL_TASK_EVENTS < 100_000


IDLE_WORKER = """
import os, sys, time

import psutil
import ray

from soulray.runtime import RayConfig, init_ray

init_ray(RayConfig(num_cpus=1, object_store_mb=100, idle_worker_s=None if sys.argv[1] == "null" else float(sys.argv[1])))


@ray.remote
def pid():
    return os.getpid()


worker = ray.get(pid.remote())
time.sleep(6)
print("alive" if psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE else "ended")
"""


@pytest.mark.parametrize(("idle_worker_s", "expected"), [("1", "ended"), ("null", "alive")])
def test_a_local_ray_ends_task_workers_that_idle_longer_than_idle_worker_s(tmp_path, idle_worker_s, expected):
    """Ray keeps an idle task worker per CPU for good, and each keeps the memory of the largest task it ran
    (0.5-1.7 GB at 1M rows, issue 22); with `ray.idle_worker_s` set, a local Ray started by soulray ends those idle longer than that."""
    import os
    import subprocess
    import sys

    script = tmp_path / "idle.py"
    script.write_text(IDLE_WORKER, encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(script), idle_worker_s], capture_output=True, text=True, env=env,
                          timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected
