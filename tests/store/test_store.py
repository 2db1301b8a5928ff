"""The versioned store on a local folder and on a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.errors import SoulrayError, StoreError, VersionConflict
from soulray.fs import S3Config, resolve
from soulray.schema import UNIT, WORKING_UNIT
from soulray.store import ShardTarget, VersionStore, build_manifest, open_version
from soulray.store.manifest import Manifest
from soulray.store.shards import write_batch
from tests.accounting import assert_accounted
from tests.conftest import PLANTED_SECRET
from tests.faulty_proxy import FaultyS3Proxy


def working_rows(count: int, rejected_every: int = 0, topic: str = "情绪") -> pa.Table:
    rows = []
    for index in range(count):
        rejected = rejected_every and index % rejected_every == 0
        rows.append({"record_id": f"{index:032x}", "question_id": f"q{index // 2}", "answer_id": f"a{index}",
                     "topic": topic, "question": f"问题{index}", "description": "", "answer": f"回答{index}",
                     "source_file": "mem", "source_row": index,
                     "reject_stage": "normalize" if rejected else None,
                     "reject_reason": "empty_answer" if rejected else None,
                     "reject_detail": "test" if rejected else None})
    return pa.Table.from_pylist(rows, schema=WORKING_UNIT)


def write_version(store: VersionStore, version: str, table: pa.Table, *, run_id: str | None = None,
                  pieces: int = 2):
    run_id = run_id or uuid.uuid4().hex[:12]
    target = ShardTarget(version_uri=store.version_uri(version), run_id=run_id, data_schema=UNIT, s3=store.s3)
    step = max(1, -(-table.num_rows // pieces))
    facts = []
    for start in range(0, table.num_rows, step):
        facts += write_batch(table.slice(start, step), target).to_pylist()
    return build_manifest(store=store, version=version, run_id=run_id, job="test",
                          config={"k": 1}, config_hash="h", inputs=[], input_rows=table.num_rows,
                          data_schema=UNIT, shard_facts=facts)


def test_publish_and_read_back(store):
    table = working_rows(50, rejected_every=10)
    manifest = write_version(store, "v1", table)
    store.commit(manifest)
    assert store.latest() == "v1" and store.versions() == ["v1"]
    version = open_version("latest", root=store.root, dataset="corpus", s3=store.s3, verify=True)
    data = version.to_table()
    assert data.num_rows == 45 and set(data.column_names) == set(UNIT.names)
    assert sorted(data["answer_id"].to_pylist()) == sorted(a for i, a in enumerate(table["answer_id"].to_pylist())
                                                           if i % 10)
    rejects = version.to_table("rejects")
    assert rejects.num_rows == 5 and set(rejects["reason"].to_pylist()) == {"empty_answer"}
    assert sorted(rejects["id"].to_pylist()) == ["a0", "a10", "a20", "a30", "a40"]  # the unit's answer id
    assert version.to_polars().height == 45
    counts = version.manifest.counts
    assert (counts.input_rows, counts.output_rows, counts.rejected_rows) == (50, 45, 5)
    assert counts.by_stage == {"normalize": {"empty_answer": 5}}
    assert version.manifest.topics == {"情绪": 45}
    # every shard name carries the run id; zstd compression
    for shard, uri in zip(version.manifest.data, version.uris(), strict=False):
        assert version.manifest.run_id in shard.path
        location = resolve(uri, store.s3)
        with location.filesystem.open_input_file(location.path) as handle:
            assert pq.ParquetFile(handle).metadata.row_group(0).column(0).compression == "ZSTD"


def test_accounting_mismatch_refuses_to_publish(store):
    table = working_rows(10)
    target = ShardTarget(version_uri=store.version_uri("v1"), run_id="r", data_schema=UNIT, s3=store.s3)
    facts = write_batch(table, target).to_pylist()
    with pytest.raises(StoreError, match="accounting mismatch"):
        build_manifest(store=store, version="v1", run_id="r", job="t", config={},
                       config_hash="h", inputs=[], input_rows=11, data_schema=UNIT, shard_facts=facts)


def race(commit: Callable[[Manifest], Manifest], manifests: list[Manifest]) -> tuple[list[Manifest], list[str]]:
    """Commit every manifest at once, one thread each: (the committed manifests, run ids that lost)."""
    committed, lost, start = [], [], threading.Barrier(len(manifests))

    def run(manifest: Manifest) -> None:
        start.wait()
        try:
            committed.append(commit(manifest))
        except VersionConflict:
            lost.append(manifest.run_id)

    threads = [threading.Thread(target=run, args=(manifest,)) for manifest in manifests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return committed, lost


def test_concurrent_publish_of_one_version_has_one_winner(store):
    manifests = [write_version(store, "v1", working_rows(5 + index)) for index in range(6)]
    committed, losers = race(store.commit, manifests)
    winners = [manifest.run_id for manifest in committed]
    assert len(winners) == 1 and len(losers) == 5
    assert store.manifest("v1").run_id == winners[0] == store.manifest("latest").run_id
    # the losers' shards sit in the version folder unreferenced: gc finds exactly those
    orphans = store.gc(min_age_s=0)
    assert orphans and all(winners[0] not in o.key and o.why == "not in the manifest" for o in orphans)
    store.gc(min_age_s=0, delete=True)
    open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)  # untouched


def test_crash_before_manifest_leaves_no_version_and_gc_cleans(store):
    store.commit(write_version(store, "v1", working_rows(8, rejected_every=3)))
    write_version(store, "v2", working_rows(8))  # shards written, then the "crash": no commit
    assert store.versions() == ["v1"] and store.latest() == "v1"
    assert_accounted(open_version("latest", root=store.root, dataset="corpus", s3=store.s3))  # v1, whole
    with pytest.raises(StoreError, match="no such version"):
        store.manifest("v2")
    assert store.gc(min_age_s=3600) == []  # too young: a run might still be writing
    orphans = store.gc(min_age_s=0, delete=True)
    assert orphans and all("/versions/v2/" in o.key and o.why == "uncommitted version" for o in orphans)
    assert store.gc(min_age_s=0) == []
    open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)


def test_checksum_mismatch_is_detected(store):
    store.commit(write_version(store, "v1", working_rows(20)))
    version = open_version("v1", root=store.root, dataset="corpus", s3=store.s3)
    location = resolve(version.uris()[0], store.s3)
    tampered = pq.read_table(location.path, filesystem=location.filesystem).slice(1)
    pq.write_table(tampered, location.path, filesystem=location.filesystem, compression="zstd")
    with pytest.raises(StoreError, match="checksum mismatch"):
        version.verify()
    with pytest.raises(StoreError, match="checksum mismatch"):
        open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)


def test_open_by_path_and_missing_version(store):
    store.commit(write_version(store, "v1", working_rows(4)))
    version = open_version(store.version_uri("v1") + "/manifest.json", s3=store.s3)
    assert version.manifest.version == "v1" and version.to_table().num_rows == 4
    with pytest.raises(StoreError, match="no such version"):
        open_version("v9", root=store.root, dataset="corpus", s3=store.s3)
    with pytest.raises(StoreError, match="no published version yet"):
        VersionStore(store.root, "other", s3=store.s3).manifest("latest")
    with pytest.raises(StoreError, match="not a version path"):
        open_version("/tmp/not/a/version")


def test_ray_reader_verifies_on_workers(ray_local, store):
    store.commit(write_version(store, "v1", working_rows(30, rejected_every=3), pieces=3))
    version = open_version("v1", root=store.root, dataset="corpus", s3=store.s3)
    assert version.to_ray(verify=True).count() == 20
    assert version.to_ray("rejects").count() == 10


def test_s3_faults_are_retried(s3_endpoint, s3_config, s3_bucket):
    with FaultyS3Proxy(s3_endpoint, rate=0.3, max_faults=4) as proxy:
        s3 = S3Config(**{**s3_config.model_dump(), "endpoint_url": proxy.endpoint})
        store = VersionStore(s3_bucket, "corpus", s3=s3)
        store.commit(write_version(store, "v1", working_rows(40, rejected_every=8), pieces=4))
        version = open_version("latest", root=s3_bucket, dataset="corpus", s3=s3, verify=True)
        assert version.to_table().num_rows == 35
        assert_accounted(version, record_ids=set(working_rows(40)["record_id"].to_pylist()))
        assert proxy.injected == 4  # 500s and 503 SlowDown, answered by retries on both clients


def test_missing_bucket_and_bad_credentials_are_clear_and_secret_free(s3_config, s3_endpoint, monkeypatch):
    store = VersionStore("s3://no-such-bucket-here", "corpus", s3=s3_config)
    with pytest.raises(StoreError) as error:
        store.latest()
    assert "bucket does not exist" in str(error.value) and PLANTED_SECRET not in str(error.value)
    monkeypatch.setenv("SOULRAY_UNSET_PROBE", "")
    bad = S3Config(endpoint_url=s3_endpoint, secret_access_key_env="SOULRAY_UNSET_PROBE")
    with pytest.raises(SoulrayError, match="SOULRAY_UNSET_PROBE is not set"):
        VersionStore("s3://b", "corpus", s3=bad)


        assert PLANTED_SECRET not in str(error.value) and "testing-key-id" not in str(error.value)
