"""The response cache: every paid completion is kept, so nothing is paid for twice.

Entries are keyed by `call_key` = hash(record content, prompt version, model, decoding parameters,
attempt number). Each rewrite actor appends entries to a buffer and flushes it as one Parquet journal
file (`<cache root>/<prompt version>/journal-<writer>-<seq>.parquet`) after every batch, so a killed job
loses at most the calls of the batches in flight; there is no object per response.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from soulray.config import S3Config
from soulray.fs import resolve

log = logging.getLogger(__name__)

ENTRY = pa.schema([
    ("call_key", pa.string()), ("record_id", pa.string()), ("model", pa.string()), ("api_key_name", pa.string()),
    ("completion", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
])
KEY_HEX = 40


def call_key(record_id: str, prompt_version: str, model: str, decoding: dict[str, Any], attempt: int) -> str:
    payload = json.dumps([record_id, prompt_version, model, decoding, attempt], sort_keys=True)
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
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    files = sorted(info.path for info in location.filesystem.get_file_info(selector)
                   if info.type == pafs.FileType.File and info.path.endswith(".parquet"))
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
        rows = pq.read_table(path, filesystem=self.location.filesystem).to_pylist()
        self.journals[path] = {row["call_key"]: row for row in rows}
        if len(self.journals) > self.journals_kept:
            self.journals.popitem(last=False)
        return self.journals[path]

    def put(self, entry: dict[str, Any]) -> None:
        self.pending[entry["call_key"]] = entry

    def flush(self) -> None:
        if not self.pending:
            return
        from soulray.store.shards import upload

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(list(self.pending.values()), schema=ENTRY), sink, compression="zstd")
        target = self.location.join(f"journal-{self.writer}-{self.sequence:06d}.parquet")
        if not target.is_s3:
            target.filesystem.create_dir(self.location.path, recursive=True)
        upload(target, sink.getvalue())
        self.sequence += 1
        self.pending = {}
