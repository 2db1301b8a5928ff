"""The store against hostile names and broken S3 setups (issue 17): a dataset or version name never
leads a path outside `<root>/<dataset>/`, and S3 failures are one line naming the bucket, the endpoint
and what to set, without a traceback or a secret."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pydantic
import pytest

from soulray.cli import main
from soulray.errors import StoreError
from soulray.fs import S3Config
from soulray.store import Shard, VersionStore
from tests.conftest import PLANTED_SECRET, free_port, moto_server
from tests.store.test_store import working_rows, write_version

DEMO_DIALOGS = "soulray/data/demo/dialogs.parquet"


def soulray(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soulray", *args], capture_output=True, text=True, timeout=300,
                          env=env)


# -- names ------------------------------------------------------------------------------------------
def test_gc_with_a_traversing_dataset_deletes_nothing_outside_the_root(tmp_path, capsys):
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    victim = tmp_path / "a" / "victim" / "versions" / "v1" / "precious.parquet"  # = root/../../victim/…
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"not yours")
    assert main(["gc", "--root", str(root), "--dataset", "../../victim", "--min-age-s", "0", "--delete"]) == 2
    assert "../../victim" in capsys.readouterr().err
    assert victim.read_bytes() == b"not yours"


@pytest.mark.parametrize("command", ["inspect", "export", "gc"])
@pytest.mark.parametrize("dataset", ["../victim", "a/b", "/abs", "..", ".hidden", ""])
def test_store_commands_refuse_bad_dataset_names(tmp_path, capsys, command, dataset):
    extra = {"inspect": [], "export": ["--output", str(tmp_path / "x.jsonl")], "gc": []}[command]
    assert main([command, "--root", str(tmp_path), "--dataset", dataset, *extra]) == 2
    assert "dataset name" in capsys.readouterr().err


def test_a_traversing_version_name_does_not_open_a_manifest_outside_the_dataset(tmp_path, capsys):
    store = VersionStore(str(tmp_path / "root"), "corpus")
    store.commit(write_version(store, "v1", working_rows(4)))
    shutil.copytree(tmp_path / "root" / "corpus" / "versions" / "v1", tmp_path / "outside" / "versions" / "x")
    hostile = "../../../outside/versions/x"  # root/corpus/versions/<hostile> = tmp_path/outside/versions/x
    assert main(["inspect", "--root", str(tmp_path / "root"), "--dataset", "corpus", hostile]) == 2
    assert "version name" in capsys.readouterr().err
    with pytest.raises(StoreError, match="version name"):
        store.manifest(hostile)
    with pytest.raises(StoreError, match="dataset name"):
        VersionStore(str(tmp_path / "root"), "../corpus")


@pytest.mark.parametrize("dataset, run_name", [("../d", "run"), ("d", "../../../x"), ("d", "a/b")])
def test_fine_tuning_run_paths_refuse_names_that_leave_the_dataset(dataset, run_name):
    """An evaluate checkpoint `finetune:<run>` is free text that becomes a path under the dataset."""
    from soulray.train.storage import RunPaths

    with pytest.raises(StoreError, match="not a valid"):
        RunPaths.for_run(root="/store", dataset=dataset, run_name=run_name)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "data/../../x.parquet", "data\\..\\x"])
def test_a_manifest_cannot_name_files_outside_its_version(path):
    with pytest.raises(pydantic.ValidationError, match="path"):
        Shard(path=path, rows=0, bytes=0, sha256="0" * 64)


def test_a_forged_manifest_is_refused_by_readers_and_gc(tmp_path, capsys):
    store = VersionStore(str(tmp_path), "corpus")
    store.commit(write_version(store, "v1", working_rows(4)))
    manifest = tmp_path / "corpus" / "versions" / "v1" / "manifest.json"
    forged = json.loads(manifest.read_text())
    forged["data"][0]["path"] = "../../../victim.parquet"
    manifest.write_text(json.dumps(forged))
    (tmp_path / "victim.parquet").write_bytes(b"not yours")
    with pytest.raises(StoreError, match="not a valid manifest"):
        store.manifest("v1")
    assert main(["gc", "--root", str(tmp_path), "--dataset", "corpus", "--min-age-s", "0", "--delete"]) == 2
    assert "not a valid manifest" in capsys.readouterr().err
    assert (tmp_path / "victim.parquet").read_bytes() == b"not yours"


# -- S3 errors --------------------------------------------------------------------------------------
def no_credentials_env(tmp_path) -> dict[str, str]:
    """This environment without any AWS credential source (and no instance metadata to wait for)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("AWS_") and not name.startswith("SOULRAY_TEST_S3")}
    return {**env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def credentials_env(tmp_path) -> dict[str, str]:
    """Credentials from the standard AWS env vars, as the CLI's store commands use them; the secret is planted."""
    return {**no_credentials_env(tmp_path), "AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET}


def assert_one_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("soulray: error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert PLANTED_SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["inspect", "clean"])
def test_no_credentials_is_one_line_saying_what_to_set(tmp_path, s3_endpoint, command):
    where = ["--root", "s3://some-bucket/p", "--dataset", "d", "--s3-endpoint", s3_endpoint]
    if command == "clean":
        where = ["--input", DEMO_DIALOGS, "--output", "s3://some-bucket/p", "--set", f"s3.endpoint_url={s3_endpoint}"]
    result = soulray(command, *where, env=no_credentials_env(tmp_path))
    assert_one_line(result, "some-bucket", s3_endpoint, "no S3 credentials", "AWS_ACCESS_KEY_ID",
                    "s3.access_key_id_env")


def test_unreachable_endpoint_is_one_line_naming_it(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = soulray("inspect", "--root", "s3://some-bucket", "--dataset", "d", "--s3-endpoint", endpoint,
                     env=credentials_env(tmp_path))
    assert_one_line(result, "some-bucket", endpoint, "cannot reach", "s3.endpoint_url")


def test_missing_bucket_names_bucket_endpoint_and_setting(tmp_path, s3_endpoint):
    result = soulray("inspect", "--root", "s3://no-such-bucket-here/p", "--dataset", "d", "--s3-endpoint", s3_endpoint,
                     env=credentials_env(tmp_path))
    assert_one_line(result, "no-such-bucket-here", s3_endpoint, "does not exist", "storage.root")


def test_access_denied_names_bucket_endpoint_and_setting():
    """A moto server that checks signatures (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are refused."""
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        s3 = S3Config(endpoint_url=endpoint, region="us-east-1",
                      access_key_id_env="SOULRAY_TEST_S3_KEY_ID", secret_access_key_env="SOULRAY_TEST_S3_SECRET")
        with pytest.raises(StoreError) as error:
            VersionStore("s3://some-bucket/x", "corpus", s3=s3).latest()
    message = str(error.value)
    assert "refused the credentials" in message
    assert "some-bucket" in message and endpoint in message and "s3.access_key_id_env" in message
    assert "\n" not in message and PLANTED_SECRET not in message and "testing-key-id" not in message
