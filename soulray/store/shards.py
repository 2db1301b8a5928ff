"""Writing shards: one Parquet file per batch, named by its own checksum, with the facts the manifest
needs (rows, bytes, SHA-256, counts) returned to the driver.

A batch of pipeline rows (WORKING_* schemas) is split here: unmarked rows go to `data/`, rows carrying
a reject mark go to `rejects/`. Shard names are `part-<run_id>-<sha256[:16]>.parquet`: deterministic for
the same rows and run, and never shared between two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soulray.errors import StoreError
from soulray.fs import Location, S3Config, resolve
from soulray.schema import REJECT

log = logging.getLogger(__name__)

SHARD_INFO = pa.schema(
    [
        ("kind", pa.string()),  # data | rejects | profile (no file: what the run report needs of a batch)
        ("path", pa.string()),  # relative to the version folder
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("counts", pa.string()),  # JSON: {"stage/reason": n} for rejects, {"topic": n} for data, see profile()
    ]
)
PROFILE = "profile"


@dataclass(frozen=True)
class ShardTarget:
    """Where one run writes its shards. Holds no secret: workers resolve S3 credentials themselves."""

    version_uri: str
    run_id: str
    data_schema: pa.Schema
    s3: S3Config = S3Config()
    max_shard_bytes: int = 256 * 1024 * 1024


def write_batch(batch: pa.Table, target: ShardTarget) -> pa.Table:
    """Split `batch` into kept and rejected rows and write each as shards; returns SHARD_INFO rows."""
    kept, rejected = _split(batch)
    infos = [{"kind": PROFILE, "path": "", "rows": batch.num_rows, "bytes": 0, "sha256": "",
              "counts": json.dumps(profile(batch, kept), ensure_ascii=False)}]
    if kept.num_rows:
        infos += _write_pieces(kept.select(target.data_schema.names).cast(target.data_schema), "data", target)
    if rejected.num_rows:
        rejects = pa.table({
            "record_id": rejected["record_id"],
            "id": _input_ids(rejected),
            "stage": rejected["reject_stage"],
            "reason": rejected["reject_reason"],
            "detail": rejected["reject_detail"],
            "source_file": rejected["source_file"],
            "source_row": rejected["source_row"],
        }).cast(REJECT)
        infos += _write_pieces(rejects, "rejects", target)
    return pa.Table.from_pylist(infos, schema=SHARD_INFO)


def _input_ids(rows: pa.Table) -> pa.ChunkedArray | pa.Array:
    """The input's id of each row: a dialogue's `id`, a rewrite unit's answer_id."""
    for name in ("id", "answer_id"):
        if name in rows.column_names:
            return rows[name]
    return pa.nulls(rows.num_rows, pa.string())


def _split(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) rows; without copying in the common case where nothing is marked."""
    if "reject_reason" not in batch.column_names or batch["reject_reason"].null_count == batch.num_rows:
        return batch, batch.slice(0, 0)
    marked = pc.is_valid(batch["reject_reason"])
    return batch.filter(pc.invert(marked)), batch.filter(marked)


def _write_pieces(table: pa.Table, kind: str, target: ShardTarget) -> list[dict[str, object]]:
    """Write `table` in as many shards as keep each under max_shard_bytes (estimated uncompressed)."""
    rows_per_piece = max(1, int(table.num_rows * target.max_shard_bytes / max(table.nbytes, 1)))
    return [write_shard(table.slice(start, rows_per_piece), kind, target)
            for start in range(0, table.num_rows, rows_per_piece)]


def write_shard(table: pa.Table, kind: str, target: ShardTarget) -> dict[str, object]:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")  # Arrow's default level: level 3 cost 25% more time for <1% size
    content = sink.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    relative = f"{kind}/part-{target.run_id}-{digest[:16]}.parquet"
    location = resolve(f"{target.version_uri}/{relative}", target.s3)
    if not location.is_s3:
        location.filesystem.create_dir(location.path.rsplit("/", 1)[0], recursive=True)
    upload(location, content)
    return {"kind": kind, "path": relative, "rows": table.num_rows, "bytes": content.size,
            "sha256": digest, "counts": json.dumps(_counts(table, kind), ensure_ascii=False)}


def upload(location: Location, content: pa.Buffer, attempts: int = 6) -> None:
    """Write `content` whole, retrying transient failures. pyarrow's S3 client does not retry every
    5xx (an InternalError during UploadPart ends the write), and a rewrite of the same bytes under the
    same name is harmless, so the whole object is retried here with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            with location.filesystem.open_output_stream(location.path) as out:
                out.write(content)
            return
        except OSError as exc:
            if attempt == attempts - 1 or not _transient(exc):
                raise StoreError(f"{location.uri}: shard upload failed: {exc}") from None
            delay = min(8.0, 0.1 * 2**attempt) * (0.5 + random.random())
            log.warning("shard upload to %s failed (%s); retrying in %.1fs", location.uri, exc, delay)
            time.sleep(delay)


def _transient(exc: OSError) -> bool:
    message = str(exc).upper()
    permanent = ("ACCESS_DENIED", "NO_SUCH_BUCKET", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "FORBIDDEN")
    return not any(marker in message for marker in permanent)


def profile(batch: pa.Table, kept: pa.Table) -> dict[str, dict[str, int]]:
    """Distributions the run report shows, counted where the rows already are: topics of every input
    row (before any drop), utterances per published dialogue, published rows per flag (review screens,
    repairs, normalisations), and rows holding each template marker in and out."""
    found: dict[str, dict[str, int]] = {}
    if "topic" in batch.column_names:
        found["topics_in"] = _value_counts(batch["topic"])
    if "messages" in kept.column_names and kept.num_rows:
        lengths = _value_counts(pc.list_value_length(kept["messages"]))
        found["utterances"] = {str(length): count for length, count in lengths.items()}
    if "flags" in kept.column_names and kept.num_rows:
        flags = pc.list_flatten(kept["flags"])
        if len(flags):
            found["flags"] = _value_counts(flags)
    if "messages" in batch.column_names and batch.num_rows:
        found.update(_marker_profile(batch, kept))
    return found


def _marker_profile(batch: pa.Table, kept: pa.Table) -> dict[str, dict[str, int]]:
    """markers_in: rows holding a marker now, or flagged as cut from them (every row, as read);
    markers_out: published rows holding it."""
    from soulray.filters.template import NORMALISED_PREFIX, marker_rows

    now = marker_rows(batch["messages"].combine_chunks())
    flags = batch["flags"].combine_chunks() if "flags" in batch.column_names else pa.nulls(batch.num_rows, pa.list_(pa.string()))
    cut: dict[str, np.ndarray] = {}
    if flags.null_count < len(flags):
        parents = pc.list_parent_indices(flags).to_numpy(zero_copy_only=False)
        values = np.asarray(pc.list_flatten(flags).to_pylist(), dtype=object)
        for name in now:
            rows = parents[values == NORMALISED_PREFIX + name]
            cut[name] = np.bincount(rows, minlength=batch.num_rows) > 0
    markers_in = {name: int(np.count_nonzero(rows | cut.get(name, False))) for name, rows in now.items()}
    after = marker_rows(kept["messages"].combine_chunks()) if kept.num_rows else {}
    return {"markers_in": markers_in, "markers_out": {name: int(np.count_nonzero(rows)) for name, rows in after.items()}}


def _counts(table: pa.Table, kind: str) -> dict[str, int]:
    if kind == "rejects":
        keys = pc.binary_join_element_wise(table["stage"], table["reason"], "/")
    elif "topic" in table.column_names:
        keys = table["topic"]
    else:
        return {}
    return _value_counts(keys)


def _value_counts(values: pa.ChunkedArray | pa.Array) -> dict:
    """{value: count}, nulls as None, counted by Arrow without the GIL: shard writers run a thread per
    core, and a Python Counter over every row held them back (12% of a shard's time, serialised)."""
    counts = pc.value_counts(values)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
