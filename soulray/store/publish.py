"""Publishing a version: shards written by Ray Data in parallel, then one manifest, committed last."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from soulray import __version__
from soulray.errors import StoreError
from soulray.schema import REJECT
from soulray.store.manifest import (
    Changes,
    Counts,
    InputFile,
    Manifest,
    Shard,
    StageReport,
    Usage,
    describe_schema,
)
from soulray.store.shards import PROFILE, ShardTarget, write_batch
from soulray.store.versions import VersionStore, utc_now

if TYPE_CHECKING:
    import ray.data


def write_shards(dataset: ray.data.Dataset, target: ShardTarget, *, rows_per_shard: int) -> list[dict[str, Any]]:
    """Run the pipeline `dataset` to completion, writing its rows as shards; returns shard facts."""
    facts = dataset.map_batches(
        write_batch, fn_kwargs={"target": target}, batch_size=rows_per_shard, batch_format="pyarrow",
    )
    return facts.take_all()


def build_manifest(*, store: VersionStore, version: str, run_id: str, job: str,
                   config: dict[str, Any], config_hash: str, inputs: list[InputFile], input_rows: int,
                   data_schema: pa.Schema, shard_facts: list[dict[str, Any]],
                   timings_s: dict[str, float] | None = None, usage: Usage | None = None,
                   stages: dict[str, StageReport] | None = None) -> Manifest:
    """Assemble the manifest and check the accounting invariant: inputs = published + rejected. Its
    parent is decided when it commits (VersionStore.commit)."""
    data = [_shard(fact) for fact in shard_facts if fact["kind"] == "data"]
    rejects = [_shard(fact) for fact in shard_facts if fact["kind"] == "rejects"]
    topics: Counter[str] = Counter()
    by_stage: dict[str, Counter[str]] = {}
    profiles: dict[str, Counter[str]] = {}
    for fact in shard_facts:
        counts = json.loads(fact["counts"])
        if fact["kind"] == PROFILE:
            for name, distribution in counts.items():
                profiles.setdefault(name, Counter()).update(distribution)
            continue
        for key, count in counts.items():
            if fact["kind"] == "data":
                topics[key] += count
            else:
                stage, _, reason = key.partition("/")
                by_stage.setdefault(stage, Counter())[reason] += count
    output_rows = sum(shard.rows for shard in data)
    rejected_rows = sum(shard.rows for shard in rejects)
    if output_rows + rejected_rows != input_rows:
        raise StoreError(f"accounting mismatch, refusing to publish: {input_rows} input rows but "
                         f"{output_rows} published + {rejected_rows} rejected")
    return Manifest(
        dataset=store.dataset, version=version, run_id=run_id, created_at=utc_now(),
        parent_version=None, code_version=f"soulray {__version__}", job=job,
        config_hash=config_hash, config=config, inputs=inputs,
        data_schema=describe_schema(data_schema), reject_schema=describe_schema(REJECT),
        data=sorted(data, key=lambda shard: shard.path), rejects=sorted(rejects, key=lambda shard: shard.path),
        counts=Counts(input_rows=input_rows, output_rows=output_rows, rejected_rows=rejected_rows,
                      by_stage={stage: dict(sorted(reasons.items())) for stage, reasons in sorted(by_stage.items())}),
        topics=dict(topics.most_common()), timings_s=timings_s or {}, usage=usage, stages=stages or {},
        profile={name: dict(counts.most_common()) for name, counts in sorted(profiles.items())},
        tokens=usage.tokens if usage else {}, cost_usd=usage.cost_usd if usage else 0.0,
    )


def _shard(fact: dict[str, Any]) -> Shard:
    return Shard(path=fact["path"], rows=fact["rows"], bytes=fact["bytes"], sha256=fact["sha256"])


def changes_since(store: VersionStore, manifest: Manifest) -> Changes | None:
    """What this (not yet committed) version changed against its parent, by record_id: rows are
    identified by content, so an edited source row counts as one removed and one added."""
    if manifest.parent_version is None:
        return None
    from soulray.store.reader import Version

    def record_ids(version: Version) -> pa.Array:
        tables = [version.to_arrow_dataset(kind).to_table(columns=["record_id"]) for kind in ("data", "rejects")
                  if (version.manifest.data if kind == "data" else version.manifest.rejects)]
        return pa.concat_tables(tables)["record_id"].combine_chunks() if tables else pa.array([], pa.string())

    current = pc.unique(record_ids(Version(store, manifest)))
    parent = pc.unique(record_ids(Version(store, store.manifest(manifest.parent_version))))
    kept = pc.sum(pc.is_in(current, value_set=parent)).as_py() or 0
    return Changes(parent=manifest.parent_version, added=len(current) - kept, removed=len(parent) - kept, kept=kept)


def attach_report(store: VersionStore, manifest: Manifest) -> Manifest:
    """Render the run report into `report/<run id>/` in the version folder and list its files in the
    manifest (with checksums, like shards), so the report is part of the version once the manifest
    commits. The run id in the path means no run ever writes a report file another run's manifest lists."""
    from soulray.fs import resolve
    from soulray.report import render
    from soulray.store.shards import upload

    files = []
    for name, content in render(manifest).items():
        relative = f"report/{manifest.run_id}/{name}"
        location = resolve(f"{store.version_uri(manifest.version)}/{relative}", store.s3)
        if not location.is_s3:
            location.filesystem.create_dir(location.path.rsplit("/", 1)[0], recursive=True)
        upload(location, pa.py_buffer(content))
        files.append(Shard(path=relative, rows=0, bytes=len(content), sha256=hashlib.sha256(content).hexdigest()))
    return manifest.model_copy(update={"report": files})


def publish(store: VersionStore, manifest: Manifest) -> Manifest:
    """Commit a job's manifest with what depends on its parent, which is known only at commit time:
    the changes against it and the report. Returns the manifest as committed."""

    def finish(committing: Manifest) -> Manifest:
        return attach_report(store, committing.model_copy(update={"changes": changes_since(store, committing)}))

    return store.commit(manifest, finish=finish)
