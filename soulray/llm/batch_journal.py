"""The batch journal: what the Batch API backend has sent, so that a killed driver, or a new run of the same
job, resumes instead of paying again.

One JSON object per batch, `<cache root>/batches/<prompt version>/<entry id>.json`, beside the response
cache, rewritten whole at each step of the batch's life (planned → uploaded → submitted → done): the key
(its name, never its secret) and model, the input file id, the batch id, the provider's last status, the
output and error file ids, and each request's state (custom_id → call_key, then answered or the error
code). The order of writes is what makes a resume safe: the entry is written before the upload and after
each call that created something, and a done entry only after its answers are in the response cache.
A local file is written beside and renamed over (never torn); an S3 object is replaced whole by its PUT.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from soulray.fs import S3Config, resolve

log = logging.getLogger(__name__)

# planned: requests chosen, nothing sent; uploaded: the input file exists; submitted: the batch exists;
# done: its results are in the response cache (answers) and in `results` (the error codes)
STATES = ("planned", "uploaded", "submitted", "done")
ANSWERED = "answered"
REQUEUED = "requeued"  # refused as a whole before any line ran (the queue was full): sent again, no retry spent


@dataclass
class BatchEntry:
    entry_id: str
    key: str  # the key's name in the config
    model: str
    requests: dict[str, str]  # custom_id → call_key
    prompt_tokens: int  # our estimate, what this batch holds of the key's queue for the model
    reserved_usd: float  # estimated at the batch price, held against the budget until settled
    state: str = "planned"
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: dict[str, str] = field(default_factory=dict)  # custom_id → ANSWERED, REQUEUED or an error code
    cost_usd: float = 0.0  # settled from the output's usage
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def new(cls, *, key: str, model: str, requests: dict[str, str], prompt_tokens: int,
            reserved_usd: float) -> BatchEntry:
        # sorts in creation order (to the microsecond), and unique across drivers
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        return cls(entry_id=f"{stamp}-{uuid.uuid4().hex[:8]}", key=key, model=model,
                   requests=requests, prompt_tokens=prompt_tokens, reserved_usd=reserved_usd)


class BatchJournal:
    def __init__(self, cache_uri: str, namespace: str, *, s3: S3Config) -> None:
        self.location = resolve(f"{cache_uri}/batches/{namespace}", s3)

    def load(self) -> list[BatchEntry]:
        """Every entry, oldest first."""
        selector = pafs.FileSelector(self.location.path, allow_not_found=True)
        files = sorted(info.path for info in self.location.filesystem.get_file_info(selector)
                       if info.type == pafs.FileType.File and info.path.endswith(".json"))
        entries = []
        for path in files:
            with self.location.filesystem.open_input_stream(path) as stream:
                entries.append(BatchEntry(**json.loads(stream.read())))
        return sorted(entries, key=lambda entry: entry.entry_id)

    def save(self, entry: BatchEntry) -> None:
        entry.updated_at = time.time()
        content = json.dumps(asdict(entry), ensure_ascii=False, sort_keys=True).encode()
        target = self.location.join(f"{entry.entry_id}.json")
        if self.location.is_s3:
            from soulray.store.shards import upload

            upload(target, content)
            return
        self.location.filesystem.create_dir(self.location.path, recursive=True)
        partial = self.location.join(f".{entry.entry_id}.json.{uuid.uuid4().hex[:6]}")
        with self.location.filesystem.open_output_stream(partial.path) as out:
            out.write(content)
        self.location.filesystem.move(partial.path, target.path)

    def delete(self, entry: BatchEntry) -> None:
        try:
            self.location.filesystem.delete_file(self.location.join(f"{entry.entry_id}.json").path)
        except FileNotFoundError:
            pass


def summary(entries: list[BatchEntry]) -> list[dict[str, Any]]:
    """One line per batch for `soulray batches`: ids, state, requests and what became of them."""
    lines = []
    for entry in entries:
        answered = sum(result == ANSWERED for result in entry.results.values())
        failed = sum(result not in (ANSWERED, REQUEUED) for result in entry.results.values())
        lines.append({"entry": entry.entry_id, "key": entry.key, "model": entry.model, "batch_id": entry.batch_id,
                      "file_id": entry.file_id, "state": entry.state, "status": entry.status,
                      "requests": len(entry.requests), "answered": answered, "failed": failed,
                      "cost_usd": round(entry.cost_usd, 6)})
    return lines
