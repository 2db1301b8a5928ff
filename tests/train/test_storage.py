"""Run storage: local folders and S3 (a real S3 protocol server on loopback), credentials never pickled."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs

from soulray.fs import S3Config
from soulray.train.storage import RunPaths, exists, local_dir, ray_storage, read_json, upload_dir, write_json
from tests.conftest import PLANTED_SECRET


def test_run_layout():
    paths = RunPaths.for_run(root="s3://bucket/prefix/", dataset="soulchat", run_name="ft-1")
    assert paths.run_uri == "s3://bucket/prefix/soulchat/finetune/ft-1"
    assert (paths.prepared, paths.model) == (f"{paths.run_uri}/prepared", f"{paths.run_uri}/model")


def test_local_storage_is_a_plain_path(tmp_path):
    assert ray_storage(str(tmp_path / "run"), S3Config()) == (str(tmp_path / "run"), None)


def test_s3_storage_for_ray_pickles_without_the_secret(s3_config, s3_bucket, tmp_path):
    path, filesystem = ray_storage(f"{s3_bucket}/soulchat/finetune/ft-1", s3_config)
    assert path == f"{s3_bucket[5:]}/soulchat/finetune/ft-1"
    filesystem.create_dir(f"{path}/train", recursive=True)  # build the real filesystem in this process first
    blob = pickle.dumps(filesystem)
    assert PLANTED_SECRET.encode() not in blob
    copy = pickle.loads(blob)  # what a Ray Train worker does: it resolves credentials from its own environment
    with copy.open_output_stream(f"{path}/train/hello.txt") as handle:
        handle.write(b"hi")
    with filesystem.open_input_stream(f"{path}/train/hello.txt") as handle:
        assert handle.read() == b"hi"
    infos = copy.get_file_info(pafs.FileSelector(f"{path}/train"))
    assert [info.base_name for info in infos] == ["hello.txt"]


def test_folders_round_trip_through_s3(s3_config, s3_bucket, tmp_path):
    source = tmp_path / "model"
    (source / "adapter").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "adapter" / "weights.bin").write_bytes(b"\x00" * 1000)
    uri = f"{s3_bucket}/run/model"
    upload_dir(source, uri, s3_config)
    write_json(f"{uri}/facts.json", {"step": 3}, s3_config)
    assert exists(f"{uri}/config.json", s3_config) and not exists(f"{uri}/missing.json", s3_config)
    assert read_json(f"{uri}/facts.json", s3_config) == {"step": 3}
    with local_dir(uri, s3_config) as copy:
        assert (copy / "adapter" / "weights.bin").read_bytes() == b"\x00" * 1000
