"""Committing versions when runs race (issue 17): the loser of a race for one version leaves the
winner's files alone, concurrent publishes form one lineage in commit order, and every file of a
version is readable by other users (same mode as any file the user writes)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time

import pytest

from soulray.errors import StoreError, VersionConflict
from soulray.fs import resolve
from soulray.store import Manifest, VersionStore, open_version, publish
from soulray.store.versions import COMMIT_LEASE_S, COMMIT_LOCK
from tests.store.test_store import race, working_rows, write_version


def listed_files(store: VersionStore, manifest: Manifest) -> dict[str, bytes]:
    """Every file the manifest lists, as stored now."""
    files = {}
    for shard in manifest.data + manifest.rejects + manifest.report:
        location = resolve(f"{store.version_uri(manifest.version)}/{shard.path}", store.s3)
        with location.filesystem.open_input_stream(location.path) as handle:
            files[shard.path] = handle.read()
    return files


def assert_matches_manifest(store: VersionStore, manifest: Manifest) -> None:
    files = listed_files(store, manifest)
    for shard in manifest.data + manifest.rejects + manifest.report:
        assert hashlib.sha256(files[shard.path]).hexdigest() == shard.sha256, shard.path


def test_the_loser_of_a_version_race_does_not_touch_the_winners_files(store):
    """Sequential: the loser starts after the winner committed (the common rerun with a fixed version)."""
    winner = publish(store, write_version(store, "v1", working_rows(12, rejected_every=4)))
    before = listed_files(store, winner)
    with pytest.raises(VersionConflict):
        publish(store, write_version(store, "v1", working_rows(7)))
    assert listed_files(store, winner) == before
    assert store.manifest("v1") == winner
    report = before[next(shard.path for shard in winner.report if shard.path.endswith("report.md"))].decode()
    assert winner.run_id in report
    open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)


def test_a_concurrent_race_for_one_version_has_one_winner_whose_files_match(store):
    committed, lost = race(lambda manifest: publish(store, manifest), [write_version(store, "v1", working_rows(5 + index)) for index in range(4)])
    assert len(committed) == 1 and len(lost) == 3
    winner = store.manifest("v1")
    assert winner.run_id == committed[0].run_id and store.latest() == "v1"
    assert_matches_manifest(store, winner)
    open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)


@pytest.mark.parametrize("kind", ["data", "rejects", "report"])
def test_verify_checks_every_file_the_manifest_lists(store, kind):
    manifest = publish(store, write_version(store, "v1", working_rows(12, rejected_every=3)))
    shard = {"data": manifest.data, "rejects": manifest.rejects, "report": manifest.report}[kind][0]
    location = resolve(f"{store.version_uri('v1')}/{shard.path}", store.s3)
    with location.filesystem.open_output_stream(location.path) as out:
        out.write(b"tampered")
    with pytest.raises(StoreError, match=f"{shard.path}.*checksum mismatch"):
        open_version("v1", root=store.root, dataset="corpus", s3=store.s3, verify=True)


def test_concurrent_publishes_form_one_lineage_in_commit_order(store):
    """Runs that all started before any of them committed: each records the version that was latest
    when it committed, so the lineage is one chain and `latest` is the last commit."""
    committed, lost = race(lambda manifest: publish(store, manifest), [write_version(store, f"v{index}", working_rows(3 + index)) for index in range(5)])
    assert not lost
    stored = sorted((store.manifest(manifest.version) for manifest in committed), key=lambda m: m.created_at)
    assert [m.parent_version for m in stored] == [None] + [m.version for m in stored[:-1]]
    assert store.latest() == stored[-1].version
    for manifest in stored[1:]:
        assert manifest.changes.parent == manifest.parent_version


def test_latest_follows_commit_order_not_creation_or_id_order(store):
    first_built = write_version(store, "b-built-first", working_rows(3))
    second_built = write_version(store, "a-built-second", working_rows(4))
    publish(store, second_built)
    publish(store, first_built)  # committed last: it is latest, and its parent is what was latest then
    assert store.latest() == "b-built-first"
    assert store.manifest("b-built-first").parent_version == "a-built-second"
    assert store.manifest("a-built-second").parent_version is None


def test_a_commit_lock_left_by_a_run_that_died_is_taken_over(store):
    """On S3 nothing notices a run that died holding the lock: a lock older than the lease is stale."""
    stale = {"owner": "died-mid-commit", "since": time.time() - 2 * COMMIT_LEASE_S}
    store.backend.put_if_absent(f"corpus/{COMMIT_LOCK}", json.dumps(stale).encode())
    publish(store, write_version(store, "v1", working_rows(3)))
    assert store.latest() == "v1"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_of_a_version_gets_the_mode_of_a_normal_file_write(tmp_path, umask):
    previous = os.umask(umask)
    try:
        store = VersionStore(str(tmp_path / "store"), "corpus")
        manifest = publish(store, write_version(store, "v1", working_rows(6, rejected_every=3)))
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    folder = tmp_path / "store" / "corpus"
    files = [folder / "latest.json", folder / "versions" / "v1" / "manifest.json"]
    files += [folder / "versions" / "v1" / shard.path for shard in manifest.data + manifest.rejects + manifest.report]
    assert {str(path.relative_to(folder)): oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {
        str(path.relative_to(folder)): oct(expected) for path in files}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_clean_runs_racing_for_one_version(ray_local, tmp_path, capsys, request, where):
    """The issue's reproduction: two `clean` runs with one storage.version on one output, at once."""
    from soulray.clean import run
    from soulray.cli import main
    from soulray.config import CleanConfig, load_config

    root, s3 = str(tmp_path / "out"), []
    if where == "s3":
        config = request.getfixturevalue("s3_config")
        root = request.getfixturevalue("s3_bucket") + "/out"
        s3 = [f"s3.endpoint_url={config.endpoint_url}", "s3.region=us-east-1",
              "s3.access_key_id_env=SOULRAY_TEST_S3_KEY_ID", "s3.secret_access_key_env=SOULRAY_TEST_S3_SECRET"]
    overrides = ["input.path=soulray/data/demo/dialogs.parquet", f"storage.root={root}", "storage.version=v1",
                 "storage.rows_per_shard=20", "dedup.enabled=false", *s3]
    results, conflicts, start = [], [], threading.Barrier(2)

    def clean(limit: int) -> None:
        config = load_config(CleanConfig, None, [*overrides, f"limit={limit}"])
        start.wait()
        try:
            results.append(run(config))
        except VersionConflict as exc:
            conflicts.append(str(exc))

    threads = [threading.Thread(target=clean, args=(limit,)) for limit in (40, 60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1 and len(conflicts) == 1, conflicts
    store = VersionStore(root, "cleaned", s3=load_config(CleanConfig, None, overrides).s3)
    winner = store.manifest("v1")
    assert winner == results[0].manifest and store.latest() == "v1"
    assert_matches_manifest(store, winner)
    with pytest.raises(VersionConflict, match="already exists"):  # a rerun learns it before it spends anything
        run(load_config(CleanConfig, None, overrides))
    assert_matches_manifest(store, winner)
    if where == "local":
        assert main(["inspect", "--root", root, "--dataset", "cleaned", "v1", "--verify"]) == 0
        assert "checksums verified" in capsys.readouterr().out
    else:
        open_version("v1", root=root, dataset="cleaned", s3=store.s3, verify=True)
