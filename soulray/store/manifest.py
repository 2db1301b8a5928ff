"""The manifest: everything a reader needs to know about a version, written last."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FORMAT = "soulray.manifest/1"
# A listed file is '/'-separated names inside the version folder: none is '..', hidden or absolute, so
# a manifest (which anyone with write access to the store can forge) never points readers or gc outside.
RELATIVE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the version folder
    rows: int
    bytes: int
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside_the_version(cls, path: str) -> str:
        if not RELATIVE_PATH.fullmatch(path):
            raise ValueError(f"{path!r}: a listed path must be relative names inside the version folder")
        return path


class InputFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str
    bytes: int
    rows: int
    fingerprint: str  # SHA-256 of (size, Parquet footer): changes whenever the file's data does


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = MANIFEST_FORMAT
    dataset: str
    version: str
    run_id: str
    created_at: str  # ISO 8601, UTC
    parent_version: str | None
    code_version: str
    job: str
    config_hash: str
    config: dict[str, Any]
    inputs: list[InputFile]
    data_schema: list[dict[str, str]]
    reject_schema: list[dict[str, str]]
    data: list[Shard]
    rejects: list[Shard]
    counts: dict[str, Any] = Field(default_factory=dict)  # input_rows, output_rows, rejected_rows, by_stage
    tokens: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    topics: dict[str, int] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)  # calls, tokens and spend this run, per API key
    profile: dict[str, dict[str, int]] = Field(default_factory=dict)  # topics_in, utterances per dialogue, …
    changes: dict[str, Any] = Field(default_factory=dict)  # against the parent version: added, removed, kept
    report: list[Shard] = Field(default_factory=list)  # the run report's files (report/…), with checksums
    stages: dict[str, Any] = Field(default_factory=dict)  # what stages report of themselves (dedup: clusters, …)

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2).encode("utf-8")

    @property
    def output_rows(self) -> int:
        return sum(shard.rows for shard in self.data)

    @property
    def rejected_rows(self) -> int:
        return sum(shard.rows for shard in self.rejects)


def describe_schema(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": field.name, "type": str(field.type)} for field in schema]
