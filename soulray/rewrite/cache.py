"""The response cache: every paid completion is kept, so nothing is paid for twice.

Entries are keyed by `call_key` = hash(record content, prompt version, model, decoding parameters,
attempt number). Each rewrite actor appends entries to a buffer and flushes it as one Parquet journal
file (`<cache root>/<prompt version>/journal-<writer>-<seq>.parquet`) after every batch, so a killed job
loses at most the calls of the batches in flight; there is no object per response.

Lookup today loads every journal of the prompt version into each actor's memory at start: fine up to a
few hundred thousand entries, not for millions (see the issue note: an index keyed by call_key prefix,
or a join in the pipeline, is the next step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

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


def call_key(record_id: str, prompt_version: str, model: str, decoding: dict[str, Any], attempt: int) -> str:
    payload = json.dumps([record_id, prompt_version, model, decoding, attempt], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


class ResponseCache:
    def __init__(self, root_uri: str, prompt_version: str, *, s3: S3Config) -> None:
        self.location = resolve(f"{root_uri}/{prompt_version}", s3)
        self.writer = uuid.uuid4().hex[:12]
        self.sequence = 0
        self.pending: list[dict[str, Any]] = []
        self.entries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        filesystem, path = self.location.filesystem, self.location.path
        selector = pafs.FileSelector(path, allow_not_found=True)
        files = [info.path for info in filesystem.get_file_info(selector)
                 if info.type == pafs.FileType.File and info.path.endswith(".parquet")]
        for file in files:
            try:
                table = pq.read_table(file, filesystem=filesystem)
            except (OSError, pa.ArrowException) as exc:  # a journal torn by a crash: skip, the calls are re-made
                log.warning("skipping unreadable cache journal %s: %s", file, exc)
                continue
            for row in table.to_pylist():
                self.entries[row["call_key"]] = row

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        self.entries[entry["call_key"]] = entry
        self.pending.append(entry)

    def flush(self) -> None:
        if not self.pending:
            return
        from soulray.store.shards import upload

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self.pending, schema=ENTRY), sink, compression="zstd")
        name = f"journal-{self.writer}-{self.sequence:06d}.parquet"
        target = self.location.join(name)
        if not target.is_s3:
            target.filesystem.create_dir(self.location.path, recursive=True)
        upload(target, sink.getvalue())
        self.sequence += 1
        self.pending = []
