"""Dedup as a Ray Data stage: mark exact and near duplicates among WORKING_UNIT or WORKING_DIALOGUE rows.

The phases, each timed in the report:

    identify     give every row a random 64-bit id and materialise (the input is read twice: once to
                 fingerprint, once to mark; materialising means the LLM rewrite upstream runs once)
    fingerprint  map_batches: normalise, hash the content, MinHash, band keys -> (key, row) pairs
    buckets      hash-partition (key, row) pairs by key across the cluster; neighbours in a bucket
                 become candidate edges (a chain per bucket is enough to connect it)
    components   union-find over the edges on the driver: edges exist only for duplicate candidates,
                 so this is small even when the data is not
    split        only where a candidate component is larger than one task should hold (component_rows;
                 templated texts chain most rows into one): its rows are cut into pieces, every pair of
                 pieces is verified by one task (pairs from shared bands, checked as resolve checks them),
                 and the verified pairs' components replace it
    resolve      the rows of each candidate component, with their signatures, hash-partitioned by
                 component; per partition: pairs from shared bands, optional verification, connected
                 components, one kept row per component (cluster.resolve)
    mark         map_batches: fill reject_stage / reject_reason / reject_detail of duplicates

No phase removes a row: the shard writer splits marked rows into the reject table, so
inputs = published + rejected holds. Rows already marked by an earlier stage, and rows whose
normalised text is empty, take no part (an empty text is no evidence of anything).

Row ids are random (collision chance about N**2 / 2**65: 3e-8 at a million rows). Which row of a cluster
is kept never depends on them unless two rows are identical in every column dedup reads.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.dedup.cluster import Decisions, Members, Rules, connected_components, duplicate_pairs, resolve
from soulray.dedup.lsh import band_keys
from soulray.dedup.minhash import MinHasher
from soulray.dedup.settings import DedupConfig
from soulray.dedup.text import DedupInputError, content_hashes, normalise, row_texts
from soulray.schema import DEDUP_DIALOGUE, DEDUP_SOURCE

if TYPE_CHECKING:
    import ray.data

    from soulray.store import Version

log = logging.getLogger(__name__)

ROW_ID = "_dedup_row"
PUBLISHED = "_dedup_published"
MARK_COLUMNS = ("reject_stage", "reject_reason", "reject_detail")


@dataclass
class DedupReport:
    """What a job summary shows: rows seen, clusters found, rows marked, seconds per phase."""

    stage: str
    input_rows: int = 0
    considered_rows: int = 0  # unmarked rows with non-empty normalised text
    published_rows: int = 0  # rows of the version deduplicated against
    bands: int = 0
    rows_per_band: int = 0
    candidate_edges: int = 0
    largest_component: int = 0  # rows in the largest candidate component
    split_components: int = 0  # candidate components larger than component_rows, verified in pieces first
    largest_resolved: int = 0  # rows in the largest component resolved by one task (after the split)
    clusters: int = 0  # clusters with at least one marked row
    marked: dict[str, int] = field(default_factory=dict)  # per reason
    # per shuffle ("buckets", "resolve"): partitions, and the planned size of one in MB (what one task holds)
    partitions: dict[str, int] = field(default_factory=dict)
    partition_mb: dict[str, float] = field(default_factory=dict)
    verify_tasks: int = 0  # verifying tasks at once (0: no limit)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows_marked(self) -> int:
        return sum(self.marked.values())

    def summary(self) -> str:
        phases = ", ".join(f"{name} {value:.1f}s" for name, value in self.seconds.items())
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.marked.items())) or "none"
        shuffles = ", ".join(f"{name} {count} × {self.partition_mb[name]:g} MB" for name, count in self.partitions.items())
        return (f"{self.stage}: {self.considered_rows}/{self.input_rows} rows considered"
                + (f" against {self.published_rows} published" if self.published_rows else "")
                + f"; {self.clusters} clusters; marked {reasons}; {phases}"
                + (f"; {self.split_components} candidate components split (largest {self.largest_component} rows,"
                   f" then {self.largest_resolved} resolved whole)" if self.split_components else "")
                + (f"; partitions {shuffles}" if shuffles else "")
                + (f"; verifying {self.verify_tasks} at once" if self.verify_tasks and "resolve" in self.partitions
                   else ""))


@dataclass(frozen=True)
class _Settings:
    """What the workers need from the config (no Ray objects, cheap to ship)."""

    method: str
    hasher: MinHasher
    rules: Rules

    @classmethod
    def of(cls, config: DedupConfig) -> _Settings:
        bands, rows = config.lsh_params()
        hasher = MinHasher(num_perm=config.num_perm, seed=config.seed, ngram=config.ngram, shingle=config.shingle,
                           hash_function=config.hash_function)
        return cls(method=config.method, hasher=hasher,
                   rules=Rules(threshold=config.threshold, bands=bands, rows=rows, keep=config.keep,
                               verify=config.verify, ngram=config.ngram, shingle=config.shingle))


def dedup_texts(texts: Sequence[str | None] | pa.Array, *, config: DedupConfig) -> Decisions:
    """The decisions the stage makes for texts held in memory, without Ray: the same normalisation,
    signatures, bands and verification, all rows as one candidate group. Ordinals are positions and
    record_ids their zero-padded positions, so the earliest row of a cluster is kept. For benchmarks,
    tests and small corpora."""
    settings = _Settings.of(config)
    texts = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.large_string())
    normalised = normalise(texts)
    rows = np.flatnonzero(pc.greater(pc.utf8_length(normalised), 0).to_numpy(zero_copy_only=False))
    rows = rows if config.enabled else rows[:0]
    normalised = normalised.take(pa.array(rows, pa.int64()))
    minhash = settings.method == "minhash"
    members = Members(ordinal=rows.astype(np.int64), record_id=[f"{row:012d}" for row in rows],
                      text_length=pc.utf8_length(normalised).to_numpy(zero_copy_only=False).astype(np.int64),
                      content_hash=content_hashes(normalised), published=np.zeros(len(rows), bool),
                      signatures=settings.hasher.signatures(normalised) if minhash else None,
                      texts=normalised.to_pylist() if minhash and settings.rules.verify == "jaccard" else None)
    return resolve(members, settings.rules)


def dedup_dataset(ds: ray.data.Dataset, *, config: DedupConfig, stage: str | None = None,
                  against: ray.data.Dataset | Version | None = None) -> tuple[ray.data.Dataset, DedupReport]:
    """Mark duplicates in `ds` (WORKING_UNIT or WORKING_DIALOGUE rows) and return the marked rows
    (every input row exactly once: held rows with the marks applied as they are read) with a report.

    `stage` names the reject stage (default "dedup_source" for units, "dedup_dialogue" for
    dialogues). `against`: a published version (or its rows as a Dataset); new rows that duplicate
    one of its rows are marked, its rows are never output."""
    import ray

    settings = _Settings.of(config)
    phases = _Phases()
    with phases("identify"):
        work = _hold(ds.map_batches(_with_row_ids, fn_kwargs={"published": False}, batch_format="pyarrow"))
        input_rows = work.count()
        columns = work.columns() if input_rows else list(ds.columns() or [])
        stage = stage or (DEDUP_DIALOGUE if "messages" in columns else DEDUP_SOURCE)
        report = DedupReport(stage=stage, input_rows=input_rows, bands=settings.rules.bands,
                             rows_per_band=settings.rules.rows, seconds=phases.seconds)
        if not config.enabled or not input_rows:
            return _strip(work), report
        _check_columns(columns)
        sources = [work]
        if against is not None:
            rows = against.to_ray() if hasattr(against, "to_ray") else against
            published = rows.map_batches(_with_row_ids, fn_kwargs={"published": True}, batch_format="pyarrow")
            sources.append(published.materialize())
            report.published_rows = sources[1].count()

    sizing = _Sizing.of(ray.cluster_resources(), config, cores=_cores_of_one_node())
    report.verify_tasks = sizing.verify_tasks
    with phases("fingerprint"):
        keyed = [source.map_batches(_fingerprint, fn_kwargs={"settings": settings}, batch_size=config.batch_rows,
                                    batch_format="pyarrow").materialize() for source in sources]
        keys_per_row = 1 + (settings.rules.bands if settings.method == "minhash" else 0)
        report.considered_rows = keyed[0].count() // keys_per_row
    with phases("buckets"):
        keys = sum(part.count() for part in keyed)
        partitions = sizing.plan(report, "buckets", rows=keys, row_bytes=KEY_ROW_BYTES, min_rows=MIN_KEYS_PER_PARTITION)
        edges = _collect(_union(keyed).repartition(partitions, keys=["key"]).map_batches(
            _bucket_edges, batch_size=None, batch_format="pyarrow"), ("u", "v"), sizing)
        report.candidate_edges = len(edges)
    with phases("components"):
        involved, component = _components(edges)
        report.largest_component = report.largest_resolved = _largest(component)
    member_bytes = _member_bytes(settings, sources, input_rows + report.published_rows)
    most = config.component_rows or sizing.rows_per_task(member_bytes, VERIFY_SHARE)
    if report.largest_component > most and settings.rules.verify != "none":  # unverified, a component is a cluster
        with phases("split"):
            involved, component = _split(sources, involved, component, most=most, settings=settings,
                                         config=config, sizing=sizing, report=report, member_bytes=member_bytes)
            report.largest_resolved = _largest(component)
        if report.largest_resolved > most:
            log.warning("%s: %d rows verified as one cluster (more than component_rows=%d); it is resolved in "
                        "one task", stage, report.largest_resolved, most)
    if not len(involved):
        phases.seconds.update(resolve=0.0, mark=0.0)
        return _strip(work), report
    with phases("resolve"):
        lookup = ray.put((involved, component))
        members = _union([source.map_batches(_members, fn_kwargs={"settings": settings, "lookup": lookup},
                                             batch_size=config.batch_rows, batch_format="pyarrow")
                          for source in sources])
        partitions = sizing.plan(report, "resolve", rows=len(involved), min_rows=MIN_MEMBERS_PER_PARTITION,
                                 row_bytes=member_bytes, share=VERIFY_SHARE)
        decisions = _collect(members.repartition(partitions, keys=["component"]).map_batches(
            _resolve_partition, fn_kwargs={"settings": settings}, batch_size=None, batch_format="pyarrow"),
            ("row", "reason", "detail", "keeper"), sizing, verifying=True)
        report.clusters = len(set(decisions["keeper"].tolist()))
        report.marked = dict(Counter(str(reason) for reason in decisions["reason"]))
    with phases("mark"):
        table = pa.table({"row": decisions["row"], "reason": decisions["reason"], "detail": decisions["detail"]})
        # lazy: the marks are applied as the next stage (or the writer) reads the held rows, so the marked
        # rows are never all in the store at once (3 GB at 1M dialogues, a 1 GB store: spilled to disk)
        marked = work.map_batches(_apply_marks, fn_kwargs={"decisions": ray.put(table), "stage": stage},
                                  batch_format="pyarrow")
    log.info("%s", report.summary())
    return marked, report


# ---- phases on the workers (pure functions of one Arrow batch) ----------------------------------------

def _with_row_ids(batch: pa.Table, *, published: bool) -> pa.Table:
    ids = np.random.default_rng().integers(0, np.iinfo(np.int64).max, batch.num_rows, dtype=np.int64)
    batch = batch.append_column(ROW_ID, pa.array(ids))
    if published:
        batch = batch.append_column(PUBLISHED, pa.array(np.ones(batch.num_rows, bool)))
    return batch


def _active(batch: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """Rows that take part (indices) and their normalised texts. Rows an earlier stage rejected are
    left out before their text is read: a rejected dialogue may have no messages at all."""
    candidates = np.arange(batch.num_rows)
    if "reject_reason" in batch.column_names and PUBLISHED not in batch.column_names:
        candidates = np.flatnonzero(pc.is_null(batch["reject_reason"]).to_numpy(zero_copy_only=False))
    texts = normalise(row_texts(batch.take(pa.array(candidates, pa.int64()))))
    keep = np.flatnonzero(pc.greater(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False))
    return candidates[keep], texts.take(pa.array(keep, pa.int64()))


def _fingerprint(batch: pa.Table, *, settings: _Settings) -> pa.Table:
    """(key, row) per bucket a row falls in: one exact-content key, and one per LSH band."""
    rows, texts = _active(batch)
    ids = batch[ROW_ID].to_numpy()[rows]
    keys = [content_hashes(texts)[:, :1]]  # 64 of the 128 hash bits: a key collision only adds a candidate
    if settings.method == "minhash":
        signatures = settings.hasher.signatures(texts)
        keys.append(band_keys(signatures, bands=settings.rules.bands, rows=settings.rules.rows))
    keys = np.concatenate(keys, axis=1)
    return pa.table({"key": keys.ravel(), "row": np.repeat(ids, keys.shape[1])})


def _bucket_edges(partition: pa.Table) -> pa.Table:
    """Rows sharing a key, chained: (r0, r1), (r1, r2), ... connects each bucket."""
    keys, rows = partition["key"].to_numpy(), partition["row"].to_numpy()
    order = np.lexsort((rows, keys))
    keys, rows = keys[order], rows[order]
    same = np.flatnonzero(keys[1:] == keys[:-1])
    return pa.table({"u": rows[same], "v": rows[same + 1]})


def _members(batch: pa.Table, *, settings: _Settings, lookup: Any) -> pa.Table:
    """The candidate rows of this batch, with what resolving their component needs."""
    involved, component = _fetch(lookup)
    rows, texts = _active(batch)
    ids = batch[ROW_ID].to_numpy()[rows]
    position = np.clip(np.searchsorted(involved, ids), 0, len(involved) - 1)
    keep = involved[position] == ids
    rows, texts, ids, position = rows[keep], texts.take(pa.array(np.flatnonzero(keep))), ids[keep], position[keep]
    hashes = content_hashes(texts)
    columns: dict[str, Any] = {
        "component": component[position], "row": ids,
        "record_id": batch["record_id"].take(pa.array(rows)).cast(pa.string()),
        "text_length": pc.utf8_length(texts).cast(pa.int64()),
        "hash_hi": hashes[:, 0], "hash_lo": hashes[:, 1],
        "published": np.full(len(rows), PUBLISHED in batch.column_names),
        "provenance": _provenance(batch, rows),
    }
    if settings.method == "minhash":
        signatures = settings.hasher.signatures(texts)
        columns["signature"] = pa.FixedSizeListArray.from_arrays(pa.array(signatures.ravel()), signatures.shape[1])
    if settings.rules.verify == "jaccard":
        columns["text"] = texts
    return pa.table(columns)


def _provenance(batch: pa.Table, rows: np.ndarray) -> pa.Array:
    """Source file and row (zero-padded, so rows sort as numbers): equal record_ids are kept in
    source order rather than by random row id."""
    taken = pa.array(rows, pa.int64())
    parts = []
    if "source_file" in batch.column_names:
        parts.append(pc.fill_null(batch["source_file"].take(taken).cast(pa.string()), ""))
    if "source_row" in batch.column_names:
        parts.append(pc.utf8_lpad(pc.fill_null(batch["source_row"].take(taken), 0).cast(pa.string()), 20, "0"))
    if not parts:
        return pa.array([""] * len(rows), pa.string())
    return pc.binary_join_element_wise(*parts, "\x1f")


def _piece_members(batch: pa.Table, *, settings: _Settings, lookup: Any) -> pa.Table:
    """The rows of split components in this batch, one copy for each task that verifies their piece
    against a piece (its own included): `task` is the task, `piece` the row's piece, `component` the
    shuffle key of the partition the task was packed into."""
    rows, piece, pieces, base, keys = _fetch(lookup)
    members = _members(batch, settings=settings, lookup=(rows, np.arange(len(rows))))
    position = members["component"].to_numpy()
    count = pieces[position]
    copy_of = np.repeat(np.arange(len(position)), count)
    other = np.arange(len(copy_of)) - np.repeat(np.cumsum(count) - count, count)
    own, count = piece[position][copy_of], count[copy_of]
    task = base[position][copy_of] + _pair_index(np.minimum(own, other), np.maximum(own, other), count)
    members = members.take(pa.array(copy_of, pa.int64()))
    members = members.set_column(members.column_names.index("component"), "component", pa.array(keys[task], pa.int64()))
    return members.append_column("task", pa.array(task, pa.int64())).append_column("piece", pa.array(own, pa.int64()))


def _pair_index(low: np.ndarray, high: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Index of the task verifying pieces (low, high), low <= high, among a component's k(k+1)/2."""
    return low * pieces - low * (low - 1) // 2 + (high - low)


def _verify_partition(partition: pa.Table, *, settings: _Settings) -> pa.Table:
    """Verified duplicate pairs (row ids) of each task in this partition: within a task's piece, or
    across its two pieces (pairs within a piece are the task of that piece with itself)."""
    tasks = partition["task"].to_numpy()
    order = np.argsort(tasks, kind="stable")
    starts = np.flatnonzero(np.r_[True, tasks[order][1:] != tasks[order][:-1]])
    found = [np.zeros((0, 2), np.int64)]
    for start, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        # most partitions hold one task: then no copy of it (a copy is a partition's size more, 4 at once)
        task = partition if len(starts) == 1 else partition.take(pa.array(order[start:end], pa.int64()))
        members = _members_of(task)
        pairs = duplicate_pairs(members, settings.rules)
        piece = task["piece"].to_numpy()
        if len(pairs) and piece.min() != piece.max():
            pairs = pairs[piece[pairs[:, 0]] != piece[pairs[:, 1]]]
        found.append(members.ordinal[pairs])
    pairs = np.concatenate(found)
    return pa.table({"u": pairs[:, 0], "v": pairs[:, 1]})


def _members_of(partition: pa.Table) -> Members:
    """The partition's rows as Members, without copying its texts: a shuffle's partition arrives as
    chunks in the object store, and `combine_chunks` copied its texts and signatures into the task's heap
    (a partition's size more in each verifying task; only the rows a pair needs are taken to shingle)."""
    signatures = None
    if "signature" in partition.column_names:
        chunks = [chunk.flatten().to_numpy() for chunk in partition["signature"].chunks]
        flat = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
        signatures = flat.reshape(partition.num_rows, -1)
    texts = None
    if "text" in partition.column_names:
        texts = partition["text"]
        texts = texts.chunk(0) if texts.num_chunks == 1 else texts
    return Members(
        ordinal=partition["row"].to_numpy(), record_id=partition["record_id"].to_pylist(),
        text_length=partition["text_length"].to_numpy(),
        content_hash=np.stack([partition["hash_hi"].to_numpy(), partition["hash_lo"].to_numpy()], axis=1),
        published=partition["published"].to_numpy(zero_copy_only=False), signatures=signatures,
        texts=texts, provenance=partition["provenance"].to_pylist())


def _resolve_partition(partition: pa.Table, *, settings: _Settings) -> pa.Table:
    decisions = resolve(_members_of(partition), settings.rules)
    return pa.table({"row": pa.array(decisions.ordinal, pa.int64()), "reason": pa.array(decisions.reason, pa.string()),
                     "detail": pa.array(decisions.detail, pa.string()), "keeper": pa.array(decisions.keeper, pa.int64())})


def _apply_marks(batch: pa.Table, *, decisions: Any, stage: str) -> pa.Table:
    decisions = _fetch(decisions)
    ids = batch[ROW_ID].to_numpy()
    marked_ids = decisions["row"].to_numpy()
    order = np.argsort(marked_ids)
    position = np.clip(np.searchsorted(marked_ids, ids, sorter=order), 0, max(len(order) - 1, 0))
    hit = (marked_ids[order[position]] == ids) if len(order) else np.zeros(len(ids), bool)
    batch = batch.drop_columns([ROW_ID])
    for name in MARK_COLUMNS:
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
    if not hit.any():
        return batch
    source = pa.array(order[position[hit]])
    values = {"reject_stage": pa.array([stage] * int(hit.sum()), pa.string()),
              "reject_reason": decisions["reason"].take(source), "reject_detail": decisions["detail"].take(source)}
    mask = pa.array(hit)
    for name, replacement in values.items():
        index = batch.column_names.index(name)
        column = pc.replace_with_mask(batch[name].combine_chunks().cast(pa.string()), mask,
                                      replacement.combine_chunks() if isinstance(replacement, pa.ChunkedArray)
                                      else replacement)
        batch = batch.set_column(index, batch.schema.field(name), column)
    return batch


def _fetch(value: Any) -> Any:
    """A broadcast value: fn_kwargs hand object refs over as refs (one copy per node, not per task)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


# ---- driver side --------------------------------------------------------------------------------------

def _split(sources: list[ray.data.Dataset], involved: np.ndarray, component: np.ndarray, *, most: int,
           settings: _Settings, config: DedupConfig, sizing: _Sizing, report: DedupReport,
           member_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate components of more than `most` rows replaced by the components of their verified pairs
    (rows with none leave). Each is cut into k pieces of at most most/2 rows (by rank of the random row
    id: a random cut); the k(k+1)/2 pairs of pieces are the tasks, so no task holds more than `most`
    rows and each candidate pair is checked in the one task that holds both its rows."""
    import ray

    sizes = np.bincount(component)
    split = sizes > most
    report.split_components = int(split.sum())
    inside = split[component]
    rows, labels = involved[inside], component[inside]
    pieces_of = np.where(split, -(-sizes // max(1, most // 2)), 0)
    tasks_of = pieces_of * (pieces_of + 1) // 2
    base_of = np.cumsum(tasks_of) - tasks_of
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows)) - np.repeat(run_starts, np.diff(np.r_[run_starts, len(rows)]))
    pieces = pieces_of[labels]
    log.info("%s: %d candidate components over component_rows=%d (largest %d rows): verifying them as %d tasks "
             "of two pieces", report.stage, report.split_components, most, report.largest_component,
             int(tasks_of.sum()))
    partitions = sizing.plan(report, "split", rows=int(sizes[split] @ pieces_of[split]), row_bytes=member_bytes,
                             min_rows=MIN_MEMBERS_PER_PARTITION, share=VERIFY_SHARE)
    task_rows = np.concatenate([_task_rows(int(size), int(k)) for size, k in zip(sizes[split], pieces_of[split],
                                                                                 strict=True)])
    keys = _shuffle_keys(partitions)[_pack(task_rows, partitions)]
    lookup = ray.put((rows, rank % pieces, pieces, base_of[labels], keys))
    members = _union([source.map_batches(_piece_members, fn_kwargs={"settings": settings, "lookup": lookup},
                                         batch_size=config.batch_rows, batch_format="pyarrow")
                      for source in sources])
    verified = _collect(members.repartition(partitions, keys=["component"]).map_batches(
        _verify_partition, fn_kwargs={"settings": settings}, batch_size=None, batch_format="pyarrow"),
        ("u", "v"), sizing, verifying=True)
    kept, kept_labels = _components(verified)
    involved = np.concatenate([involved[~inside], kept])
    component = np.concatenate([component[~inside], kept_labels + len(sizes)])
    order = np.argsort(involved)
    return involved[order], component[order]


def _task_rows(size: int, pieces: int) -> np.ndarray:
    """Rows of each of a split component's tasks, in task order: its pieces are the rows of rank r with
    r % pieces == p; task (low, high) holds both (one copy when low == high)."""
    piece_rows = (size - np.arange(pieces) + pieces - 1) // pieces
    low, high = np.triu_indices(pieces)  # (0, 0), (0, 1), ..., (1, 1), ...: the order of _pair_index
    return piece_rows[low] + np.where(low == high, 0, piece_rows[high])


def _pack(sizes: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each item: largest first into the emptiest bin (LPT), so no bin holds much more than its
    share. Hashing 136 equal tasks into 88 partitions put 4 in one (a 1.4 GB task at 1M dialogues)."""
    import heapq

    loads = [(0, b) for b in range(bins)]
    chosen = np.empty(len(sizes), np.int64)
    for item in np.argsort(-np.asarray(sizes), kind="stable"):
        load, b = heapq.heappop(loads)
        chosen[item] = b
        heapq.heappush(loads, (load + int(sizes[item]), b))
    return chosen


def _shuffle_keys(partitions: int) -> np.ndarray:
    """An int64 key per hash partition that Ray's keyed repartition sends to that partition, so a planned
    assignment of tasks to partitions survives the shuffle. Where Ray's partitioner cannot be asked
    (another Ray version), the partition numbers themselves: hashed, lumpier, still correct (a task's
    rows share one key, so they always meet in one partition)."""
    try:
        from ray.data._internal.arrow_ops.transform_pyarrow import hash_partition
    except ImportError:  # pragma: no cover - depends on Ray's internals
        return np.arange(partitions, dtype=np.int64)
    keys = np.full(partitions, -1, np.int64)
    start = 0
    while (keys < 0).any() and start < 1_000 * partitions:
        probe = np.arange(start, start + 8 * partitions, dtype=np.int64)
        for partition, table in hash_partition(pa.table({"component": probe}), hash_cols=["component"],
                                               num_partitions=partitions).items():
            if keys[partition] < 0:
                keys[partition] = table["component"][0].as_py()
        start += len(probe)
    missing = keys < 0
    keys[missing] = np.flatnonzero(missing)  # never seen: a hashed key (correct, maybe lumpy)
    return keys


def _largest(component: np.ndarray) -> int:
    return int(np.bincount(component).max()) if len(component) else 0


def _components(edges: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row ids that have an edge, and their candidate component labels."""
    if not len(edges["u"]):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    involved = np.unique(np.concatenate([edges["u"], edges["v"]]))
    pairs = np.stack([np.searchsorted(involved, edges["u"]), np.searchsorted(involved, edges["v"])], axis=1)
    return involved, connected_components(len(involved), pairs).astype(np.int64)


def _collect(ds: ray.data.Dataset, names: tuple[str, ...], sizing: _Sizing, *,
             verifying: bool = False) -> dict[str, np.ndarray]:
    """A small result (edges, decisions) of a shuffle as numpy columns on the driver. Ray's shuffle map
    tasks gather their input blocks up to `shuffle_input_batch_bytes` (1 GiB in Ray 2.60) into one task,
    which held 2.8 GB at 1M dialogues; here they gather at most what one partition holds. A verifying
    shuffle (split, resolve) runs at most `sizing.verify_tasks` partitions' tasks at once: Ray Data's shuffle
    tasks ask Ray for `memory` of 2x their input, and a memory limit on the execution holds back those that
    do not fit (four at once on a 2-core machine's four logical CPUs were ~1.8 GB, for no more speed)."""
    import ray

    context = ds.context
    options = context.execution_options
    before, limits = context.shuffle_input_batch_bytes, options.resource_limits
    context.shuffle_input_batch_bytes = min(before, sizing.target_bytes) if before > 0 else sizing.target_bytes
    if verifying:
        options.resource_limits = limits.copy(memory=sizing.verify_memory())
    try:
        tables = [table for table in ray.get(ds.to_arrow_refs()) if table.num_rows]
    finally:
        context.shuffle_input_batch_bytes, options.resource_limits = before, limits
    if not tables:
        return {name: np.zeros(0, np.int64) for name in names}
    table = pa.concat_tables(tables)
    return {name: table[name].to_numpy(zero_copy_only=False) for name in names}


KEY_ROW_BYTES = 16  # a (key, row) pair of the buckets shuffle
# Below these, one more partition costs a task and a block for no memory saved: band keys (16 bytes, only
# sorted) and candidate rows (signature and text, resolved pair by pair)
MIN_KEYS_PER_PARTITION, MIN_MEMBERS_PER_PARTITION = 2_000_000, 200_000
# What a verifying reduce task (split, resolve) holds at its peak, in partitions: Ray's shards, their
# concatenation, the shingles and pairs of its candidates (~3-4x, four at once at 1M dialogues: 504-604 MB for
# 127.5 MB partitions); the buckets' tasks only sort keys (~2x). Their partitions get this share of the target.
# 0.5 was tried at 1M dialogues (issue 22, eighth session): the giant component was cut into twice the pieces,
# the split ran 406 tasks instead of 105 for 3x the time, and its shuffle maps (k copies of each row) peaked
# higher than the halved reduce tasks saved. Kept as the knob to turn with per-bucket verification.
VERIFY_SHARE = 1.0
SHUFFLE_REQUEST = 2  # Ray Data 2.60's shuffle tasks ask for `memory` of 2x their input (SHUFFLE_PEAK_MEMORY_MULTIPLIER)
HOLD_BLOCK_BYTES = 8 * 2 ** 20  # what dedup's held rows are joined into (a few hundred blocks at 1M dialogues)


@dataclass(frozen=True)
class _Sizing:
    """How the two shuffles are cut: partitions of at most `target_bytes` each (what one reduce task
    holds, and then sorts or resolves), so that memory per task stays flat as the rows grow; at least
    2 per CPU while each still gets `min_rows`, to spread the work. `fixed`: dedup.num_partitions."""

    cpus: int
    target_bytes: int
    fixed: int | None
    verify_tasks: int = 0  # 0: no limit

    @classmethod
    def of(cls, resources: dict[str, float], config: DedupConfig, cores: int | None = None) -> _Sizing:
        """`cores`: the machine's, where Ray is one node on it (its logical CPUs may be more: a local Ray
        declares at least 4 for the I/O-bound stages, and verifying is CPU-bound)."""
        cpus = max(1, int(resources.get("CPU", 1)))
        per_cpu = resources.get("memory", 0) / cpus  # Ray's schedulable memory (the heap, not the object store)
        target = config.partition_mb * 2 ** 20
        if per_cpu:
            target = min(target, max(8 * 2 ** 20, int(per_cpu / 4)))
        verify = config.verify_tasks or min(cpus, cores or cpus)
        return cls(cpus=cpus, target_bytes=target, fixed=config.num_partitions, verify_tasks=verify)

    def verify_memory(self) -> float:
        """What a verifying shuffle's tasks may ask Ray for at once: `verify_tasks` full partitions' worth,
        as Ray Data asks (2x a task's input; a map task's input is capped at a partition by `_collect`).
        Smaller partitions run more at once; one larger than this still runs, alone."""
        if not self.verify_tasks:
            return float("inf")
        return self.verify_tasks * SHUFFLE_REQUEST * self.target_bytes * VERIFY_SHARE

    def partitions(self, rows: int, row_bytes: float, min_rows: int, share: float = 1.0) -> int:
        """Partitions of at most `share` of the target each (and the spread below)."""
        if self.fixed:
            return self.fixed
        by_memory = -(-int(rows * row_bytes) // int(self.target_bytes * share))
        by_work = min(2 * self.cpus, -(-rows // min_rows))
        return max(1, by_memory, by_work)

    def rows_per_task(self, row_bytes: float, share: float = 1.0) -> int:
        """Rows of `row_bytes` that one partition of `share` of the target holds."""
        return max(2, int(self.target_bytes * share // max(row_bytes, 1.0)))

    def plan(self, report: DedupReport, shuffle: str, *, rows: int, row_bytes: float, min_rows: int,
             share: float = 1.0) -> int:
        """The partitions of one shuffle, noted in the report with the size of one."""
        partitions = self.partitions(rows, row_bytes, min_rows, share)
        report.partitions[shuffle] = partitions
        report.partition_mb[shuffle] = round(rows * row_bytes / partitions / 2 ** 20, 1)
        return partitions


def _cores_of_one_node() -> int | None:
    """This machine's cores where the Ray cluster is one node (the driver runs on it), else None."""
    import os

    import ray

    return (os.cpu_count() or 1) if sum(1 for node in ray.nodes() if node.get("Alive")) == 1 else None


def _member_bytes(settings: _Settings, sources: list[ray.data.Dataset], rows: int) -> float:
    """What one candidate row ships to be resolved: ids, hashes and provenance, its signature, and (to be
    verified) its text, taken as at most the average input row (a materialised dataset knows its size)."""
    size = 120.0
    if settings.method == "minhash":
        size += 4 * settings.hasher.num_perm
    if settings.rules.verify == "jaccard":
        size += sum(source.size_bytes() for source in sources) / max(rows, 1)
    return size


def _hold(ds: ray.data.Dataset, *, in_flight: int = 4, block_bytes: int = HOLD_BLOCK_BYTES) -> ray.data.Dataset:
    """`ds.materialize()`, except that the blocks kept are copies its execution does not own, joined into
    blocks of about `block_bytes`. Ray Data 2.60 counts every block an operator produced that is still
    referenced against that operator's object-store budget (half the store), so holding a long pipeline's
    output (the whole rewrite, for the dialogue dedup) spends it: past ~220k dialogues with a 1 GB store the
    rewrite ran one task at a time, one actor idle. Consecutive blocks are copied together by
    a small task (beside them) as they arrive and the originals let go. Joined, because each held block is
    a task of every phase after (the rewrite hands on blocks of ~120 rows: 810 at 100k dialogues, 24 once joined).
    Blocks that disagree on a column's type (not just null) raise DedupInputError here."""
    import ray
    from ray.data._internal.execution.interfaces.ref_bundle import BlockEntry, RefBundle
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.input_data_operator import InputData
    from ray.data.block import BlockMetadata
    from ray.data.dataset import MaterializedDataset

    joiner = ray.remote(num_cpus=0.25, num_returns=2)(_join_blocks)
    joined: list[tuple[ray.ObjectRef, ray.ObjectRef, BlockMetadata]] = []
    pending: list[ray.ObjectRef] = []
    group: list[BlockEntry] = []

    def flush() -> None:
        nonlocal pending
        if not group:
            return
        if len(pending) >= in_flight:
            _, pending = ray.wait(pending, num_returns=len(pending) - in_flight + 1, fetch_local=False)
        block, schema = joiner.remote(*(entry.ref for entry in group))
        pending.append(schema)
        files = sorted({name for entry in group for name in entry.metadata.input_files or ()})
        joined.append((block, schema, BlockMetadata(
            num_rows=sum(entry.metadata.num_rows or 0 for entry in group),
            size_bytes=sum(entry.metadata.size_bytes or 0 for entry in group), exec_stats=None, input_files=files)))
        group.clear()

    blocks_in = 0
    for bundle in ds.iter_internal_ref_bundles():
        for entry in bundle.blocks:
            group.append(entry)
            blocks_in += 1
            if sum(held.metadata.size_bytes or 0 for held in group) >= block_bytes:
                flush()
    flush()
    schemas = ray.get([schema for _, schema, _ in joined])  # a join's error (blocks that disagree) raises here
    log.info("dedup holds %d rows: %d blocks joined into %d", sum(meta.num_rows or 0 for _, _, meta in joined),
             blocks_in, len(joined))
    bundles = [RefBundle(blocks=[BlockEntry(block, metadata)], owns_blocks=False, schema=schema)
               for (block, _, metadata), schema in zip(joined, schemas, strict=True)]
    held = MaterializedDataset(LogicalPlan(InputData(input_data=bundles), ds.context), ds.context, ds._raw_stats())
    held._execute()
    return held


def _join_blocks(*blocks: pa.Table) -> tuple[pa.Table, pa.Schema]:
    """One block of `blocks` (a null column takes its type from the others), and its schema."""
    try:
        joined = blocks[0] if len(blocks) == 1 else pa.concat_tables(blocks, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        schemas = {str(block.schema) for block in blocks}
        raise DedupInputError(f"dedup's input rows disagree on their columns ({len(schemas)} schemas: "
                              f"{' | '.join(sorted(schemas))}): {error}") from None
    return joined, joined.schema


def _union(datasets: list[ray.data.Dataset]) -> ray.data.Dataset:
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _strip(work: ray.data.Dataset) -> ray.data.Dataset:
    """The input rows unchanged (no duplicates): drop the row id, make sure the mark columns exist."""
    empty = pa.table({"row": pa.array([], pa.int64()), "reason": pa.array([], pa.string()),
                      "detail": pa.array([], pa.string())})
    return work.map_batches(_apply_marks, fn_kwargs={"decisions": empty, "stage": ""}, batch_format="pyarrow")


def _check_columns(columns: list[str]) -> None:
    if "record_id" not in columns:
        raise DedupInputError(f"dedup needs a 'record_id' column; got {columns}")
    if "messages" not in columns and not {"question", "answer"} <= set(columns):
        raise DedupInputError(f"dedup needs 'messages' (dialogues) or 'question' and 'answer' (units); got {columns}")


class _Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)

