"""The manifest: everything a reader needs to know about a version, written last."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class Counts(BaseModel):
    """Rows in = published + rejected, and the rejected rows by stage and reason."""

    model_config = ConfigDict(extra="forbid")

    input_rows: int = 0
    output_rows: int = 0
    rejected_rows: int = 0
    by_stage: dict[str, dict[str, int]] = Field(default_factory=dict)  # stage → reason → rows


class CallStats(BaseModel):
    """Calls, tokens and spend of one API key or one model (the quota broker's counters; it may keep more)."""

    model_config = ConfigDict(extra="allow")

    requests: float = 0
    ok: float = 0
    rate_limited: float = 0
    errors: float = 0
    prompt_tokens: float = 0
    completion_tokens: float = 0
    cost_usd: float = 0.0


class KindStats(BaseModel):
    """Calls of one kind (rewrite, persona, judge, revision, generate): paid and cached answers, and this
    run's spend on them (a cache hit is a call at no cost, as the broker counts it)."""

    model_config = ConfigDict(extra="forbid")

    paid: float = 0
    cached: float = 0
    prompt_tokens: float = 0
    completion_tokens: float = 0
    cost_usd: float = 0.0

    @property
    def calls(self) -> float:
        return self.paid + self.cached


class BatchUsage(BaseModel):
    """rewrite.mode batch: the Batch API batches of a run (soulray/llm/batch.py BatchDriver.usage)."""

    model_config = ConfigDict(extra="forbid")

    entries: int = 0  # batches this run knows of (its own and the ones it resumed)
    done: int = 0  # of those, collected
    statuses: dict[str, int] = Field(default_factory=dict)  # the provider's last status → batches
    requeued: int = 0  # requests sent again (a batch expired, was cancelled or failed before answering them)
    failed_lines: int = 0  # output lines with an error (retried until batch.max_retries)
    spent_usd: float = 0.0  # settled at the batch price this run
    wall_s: float | None = None  # the batch phase on the driver


class Usage(BaseModel):
    """What the LLM calls of a run took, per key, per model and per kind of call."""

    model_config = ConfigDict(extra="forbid")

    keys: dict[str, CallStats] = Field(default_factory=dict)
    models: dict[str, CallStats] = Field(default_factory=dict)
    tokens: dict[str, int] = Field(default_factory=dict)  # prompt, completion
    cost_usd: float = 0.0
    budget_usd: float | None = None
    kinds: dict[str, KindStats] = Field(default_factory=dict)  # by kind of call (soulray/llm/client.py `complete`)
    batches: BatchUsage | None = None  # rewrite.mode batch (the calls above were then paid through batches)

    @property
    def paid_calls(self) -> int:
        return int(sum(stats.ok for stats in self.keys.values()))


class Changes(BaseModel):
    """Against the parent version, by record_id: a changed row is one removed and one added."""

    model_config = ConfigDict(extra="forbid")

    parent: str
    added: int
    removed: int
    kept: int


class DedupFacts(BaseModel):
    """What a dedup stage found (soulray/dedup/stage.py DedupReport, without its timings)."""

    model_config = ConfigDict(extra="forbid")

    clusters: int = 0
    rows_marked: int = 0
    marked: dict[str, int] = Field(default_factory=dict)  # per reason
    considered_rows: int = 0
    bands: int = 0
    rows_per_band: int = 0
    candidate_edges: int = 0
    largest_component: int = 0
    # per shuffle ("buckets", "resolve"): partitions and the planned MB of one (dedup.partition_mb)
    partitions: dict[str, int] = Field(default_factory=dict)
    partition_mb: dict[str, float] = Field(default_factory=dict)


class GateFacts(BaseModel):
    """What the quality gate found (soulray/gate/): dialogues judged, passed at once or after their one
    revision, rejected by reason; and per dimension (and "total") the dialogues at each score, at their
    first rating ("before" the gate) and as published ("after")."""

    model_config = ConfigDict(extra="forbid")

    rubric_version: str
    threshold: int
    judged: int = 0
    passed: int = 0  # at the first rating
    revised_passed: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)  # by reason
    before: dict[str, dict[str, int]] = Field(default_factory=dict)  # dimension → score → dialogues
    after: dict[str, dict[str, int]] = Field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return (self.passed + self.revised_passed) / self.judged if self.judged else float("nan")


class StageReport(BaseModel):
    """What one stage reports of itself. `seconds`: for a streaming map stage, `busy` = time inside its
    batch functions summed over every task and actor (see soulray/pipeline.py, StageClock); for a stage
    that materialises (dedup), the driver's wall time per named phase."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seconds: dict[str, float] = Field(default_factory=dict)
    batches: int = 0  # batch calls timed (map stages)
    dedup: DedupFacts | None = None
    gate: GateFacts | None = None


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
    counts: Counts = Field(default_factory=Counts)
    tokens: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    topics: dict[str, int] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    usage: Usage | None = None  # calls, tokens and spend this run, per API key and model (jobs that call an LLM)
    profile: dict[str, dict[str, int]] = Field(default_factory=dict)  # topics_in, utterances per dialogue, …
    changes: Changes | None = None  # against the parent version (none for a first version)
    report: list[Shard] = Field(default_factory=list)  # the run report's files (report/…), with checksums
    stages: dict[str, StageReport] = Field(default_factory=dict)  # by stage name, in pipeline order

    @model_validator(mode="before")
    @classmethod
    def _read_dict_form(cls, data: Any) -> Any:
        """Manifests published before these parts were typed: `usage` and `changes` were `{}` when
        empty, and `stages` held dedup's facts as a bare dict whose phase times were in `timings_s`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("usage", "changes"):
            if data.get(name) == {}:
                data[name] = None
        stages = data.get("stages") or {}
        if any(isinstance(facts, dict) and "name" not in facts for facts in stages.values()):
            timings = data.get("timings_s") or {}
            data["stages"] = {name: facts if "name" in facts else {
                "name": name, "dedup": facts,
                "seconds": {key.removeprefix(f"{name}_").removesuffix("_s"): value
                            for key, value in timings.items() if key.startswith(f"{name}_")}}
                for name, facts in stages.items()}
        return data

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
