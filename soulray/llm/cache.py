"""The response cache: every paid completion is kept, so nothing is paid for twice.

Entries are keyed by `call_key` = hash(the prompt messages sent, prompt version, model, decoding
parameters, attempt number). Each rewrite actor appends entries to a buffer and writes it as one Parquet
journal file (`<cache root>/<prompt version>/journal-<writer>-<seq>.parquet`) every second and at the end
of every batch, so a killed job loses only the calls in flight and those answered in its last second;
there is no object per response. `compact` merges small journals into large ones at the start and end of
every run, so the number of files stays small however many runs and batches wrote them.

Lookup scales with an index, not with memory: at the start of a run the driver reads only the
`call_key` column of every journal into a sorted array of 20-byte keys with the number of the journal
holding each (≈24 bytes an entry: 1M responses ≈ 24 MB, shared with every actor through Ray's object
store). An actor finds a key by binary search, then reads that journal whole and keeps the last few it
read: a rerun walks the sources in the order the journals were written, so consecutive rows share a
journal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from soulray.fs import S3Config, resolve

log = logging.getLogger(__name__)

ENTRY = pa.schema([
    ("call_key", pa.string()), ("record_id", pa.string()), ("model", pa.string()), ("api_key_name", pa.string()),
    ("completion", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
])
KEY_HEX = 40


def call_key(messages: list[dict[str, str]], prompt_version: str, model: str, decoding: dict[str, Any],
             attempt: int) -> str:
    """The identity of one paid call: the exact prompt sent (so a source text changed by a cleaning rule
    or a redaction is a new call, while an unchanged row on a new source file is not), the prompt
    version, the model, the decoding parameters and which re-ask this is."""
    payload = json.dumps([messages, prompt_version, model, decoding, attempt], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_HEX]


@dataclass(frozen=True)
class CacheIndex:
    keys: np.ndarray  # sorted, dtype S20 (the call_key's bytes)
    journals: np.ndarray  # int32: which file holds each key
    files: list[str]  # journal paths inside the cache filesystem

    def find(self, key: str) -> str | None:
        # numpy's S dtype drops trailing NUL bytes when it hands a value back; every key is exactly 20
        # bytes, so comparing without them is still exact
        packed = bytes.fromhex(key).rstrip(b"\x00")
        position = int(np.searchsorted(self.keys, packed))
        if position < len(self.keys) and self.keys[position] == packed:
            return self.files[int(self.journals[position])]
        return None

    def __len__(self) -> int:
        return len(self.keys)


def build_index(root_uri: str, prompt_version: str, *, s3: S3Config) -> CacheIndex:
    """Read the call_key column of every journal of `prompt_version` (driver, once per run)."""
    location = resolve(f"{root_uri}/{prompt_version}", s3)
    files = [info.path for info in _journal_files(location)]
    keys, journals, readable = [], [], []
    for file in files:
        try:
            column = pq.read_table(file, columns=["call_key"], filesystem=location.filesystem)["call_key"]
        except (OSError, pa.ArrowException) as exc:  # a journal torn by a crash: skip, its calls are re-made
            log.warning("skipping unreadable cache journal %s: %s", file, exc)
            continue
        keys.extend(bytes.fromhex(key) for key in column.to_pylist())
        journals.extend([len(readable)] * len(column))
        readable.append(file)
    packed = np.array(keys, dtype=f"S{KEY_HEX // 2}")
    order = np.argsort(packed, kind="stable")
    return CacheIndex(packed[order], np.array(journals, dtype=np.int32)[order], readable)


class ResponseCache:
    def __init__(self, root_uri: str, prompt_version: str, *, s3: S3Config, index: CacheIndex | None = None,
                 journals_kept: int = 64) -> None:
        self.location = resolve(f"{root_uri}/{prompt_version}", s3)
        self.index = index if index is not None else build_index(root_uri, prompt_version, s3=s3)
        self.writer = uuid.uuid4().hex[:12]
        self.sequence = 0
        self.pending: dict[str, dict[str, Any]] = {}  # written this batch, not yet flushed
        self.journals: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self.journals_kept = journals_kept

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self.pending:
            return self.pending[key]
        journal = self.index.find(key)
        if journal is None:
            return None
        return self._journal(journal).get(key)

    def _journal(self, path: str) -> dict[str, dict[str, Any]]:
        if path in self.journals:
            self.journals.move_to_end(path)
            return self.journals[path]
        try:
            rows = pq.read_table(path, filesystem=self.location.filesystem).to_pylist()
        except (OSError, pa.ArrowException) as exc:  # compacted away by a concurrent run: a miss, paid again
            log.warning("cache journal %s is gone (%s); treating its entries as misses", path, exc)
            rows = []
        self.journals[path] = {row["call_key"]: row for row in rows}
        if len(self.journals) > self.journals_kept:
            self.journals.popitem(last=False)
        return self.journals[path]

    def put(self, entry: dict[str, Any]) -> None:
        self.pending[entry["call_key"]] = entry

    def flush(self) -> None:
        self.write(*self.detach())

    def detach(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """Hand the pending entries over for writing (cheap; call it on the thread that calls `put`), so
        that `write` can run on another thread while new entries keep arriving."""
        entries, self.pending = self.pending, {}
        self.sequence += 1
        return self.sequence - 1, entries

    def write(self, sequence: int, entries: dict[str, dict[str, Any]]) -> None:
        if not entries:
            return
        from soulray.store.shards import upload

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(list(entries.values()), schema=ENTRY), sink, compression="zstd")
        target = self.location.join(f"journal-{self.writer}-{sequence:06d}.parquet")
        if not target.is_s3:
            target.filesystem.create_dir(self.location.path, recursive=True)
        upload(target, sink.getvalue())


@dataclass(frozen=True)
class Compaction:
    journals_before: int
    journals_after: int
    entries: int


def compact(root_uri: str, prompt_version: str, *, s3: S3Config, min_journals: int = 64,
            small_bytes: int = 4 * 1024 * 1024, target_bytes: int = 64 * 1024 * 1024) -> Compaction:
    """Merge small journals into few large ones, so that the next run's index reads a handful of files
    instead of one per batch ever written (1M rows in batches of 32 ≈ 31k journals ≈ 31k GETs on S3).

    Safe against a crash and against a run reading the cache meanwhile: each merged file is written
    whole before the journals it replaces are deleted, so every entry is in at least one file at every
    moment (a crash in between leaves duplicates, which the index tolerates); a run that still has a
    deleted journal in its index treats its entries as misses.
    """
    location = resolve(f"{root_uri}/{prompt_version}", s3)
    journals = _journal_files(location)
    small = [info for info in journals if info.size is not None and info.size < small_bytes]
    if len(small) < min_journals:
        return Compaction(len(journals), len(journals), 0)
    from soulray.store.shards import upload

    groups, current, size = [], [], 0
    for info in small:
        if current and size + info.size > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(info.path)
        size += info.size
    groups.append(current)
    writer, entries = uuid.uuid4().hex[:12], 0
    with ThreadPoolExecutor(max_workers=READERS) as pool:  # small objects: latency-bound on S3, so read many at once
        for number, group in enumerate(groups):
            merged = _merge(location, group, pool)
            if merged is None:
                continue
            data, rows = merged
            upload(location.join(f"compact-{writer}-{number:06d}.parquet"), data)
            entries += rows
            list(pool.map(location.filesystem.delete_file, group))
    after = len(_journal_files(location))
    log.info("cache %s: compacted %d journals into %d files (%d entries)", prompt_version, len(small),
             after - (len(journals) - len(small)), entries)
    return Compaction(len(journals), after, entries)


def _journal_files(location) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    return sorted((info for info in location.filesystem.get_file_info(selector)
                   if info.type == pafs.FileType.File and info.path.endswith(".parquet")), key=lambda info: info.path)


READERS = 16
ROW_GROUP = 16_384


def _merge(location, group: list[str], pool: ThreadPoolExecutor) -> tuple[pa.Buffer, int] | None:
    """The journals of `group` as one Parquet file in memory, and its rows: read READERS at a time and
    written a row group at a time, so the driver holds the compressed file and one row group, not the
    whole group decompressed (a group of 64 MB of journals is ~300 MB of entries; issue 22)."""
    sink, rows, pending = pa.BufferOutputStream(), 0, []
    with pq.ParquetWriter(sink, ENTRY, compression="zstd") as out:
        for start in range(0, len(group), READERS):
            chunk = pool.map(lambda path: _read_or_none(location, path), group[start:start + READERS])
            pending.extend(table for table in chunk if table is not None)
            if sum(table.num_rows for table in pending) >= ROW_GROUP:
                rows += _write_rows(out, pending)
                pending = []
        rows += _write_rows(out, pending)
    return (sink.getvalue(), rows) if rows else None


def _write_rows(out: pq.ParquetWriter, tables: list[pa.Table]) -> int:
    if not tables:
        return 0
    table = pa.concat_tables(tables)
    out.write_table(table, row_group_size=ROW_GROUP)
    return table.num_rows


def _read_or_none(location, path: str) -> pa.Table | None:
    try:
        return pq.read_table(path, filesystem=location.filesystem, schema=ENTRY)
    except (OSError, pa.ArrowException) as exc:  # torn by a crash: its entries were never acknowledged
        log.warning("skipping unreadable cache journal %s: %s", path, exc)
        return None
