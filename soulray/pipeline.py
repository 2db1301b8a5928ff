"""A pipeline and the one way to run it: a source, a list of stages, a published version.

    pipeline = Pipeline(job="clean", source=..., stages=[FilterStage(...), DedupStage(...)], data_schema=DIALOGUE)
    result = run(pipeline, settings=JobSettings(...))

`run` plans the source on the driver (files checked, lineage taken), starts Ray, reads, applies each
stage in order, writes the shards (Ray Data streams: the stages run as the writer pulls rows), builds
the manifest, lets each stage check it (the rewrite refuses an outage), and commits it through
`store.publish` (changes against the parent and the run report, committed last). Every job that
publishes a version (regenerate, clean, an imported corpus) goes through here.

A stage has one contract, `Stage`: `apply(dataset, context) -> dataset`. It marks the rows it drops
instead of removing them (inputs = published + rejected), may report facts of itself
(`context.report`), and may check the manifest before it commits.

Timings. Ray Data is lazy and streaming: the stages run at the same time, block by block, and Ray fuses
consecutive maps into one task, so a stage has no wall time of its own. What each map stage reports is
its *busy* time: seconds spent inside its batch function, summed over every task and actor that ran it
(`StageClock`; a rewrite actor's concurrent batches add up, so busy time can exceed wall time). A stage
that materialises (dedup) reports the driver's wall time per phase; its first phase runs everything
upstream of it. The job's own wall times (plan, the streaming write, total) are in `timings_s`.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa
from pydantic import BaseModel

from soulray.config import check_named_secrets, config_hash, secret_env_names
from soulray.fs import S3Config
from soulray.redaction import redact_tree
from soulray.runtime import RayConfig
from soulray.store import (
    InputFile,
    Manifest,
    ShardTarget,
    VersionStore,
    build_manifest,
    new_version_id,
    publish,
    write_shards,
)
from soulray.store.manifest import StageReport, Usage
from soulray.store.settings import StorageConfig

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


# -- the contract ---------------------------------------------------------------------------------------
@dataclass
class Context:
    """What a stage may use besides its own settings: the run's identity and store, S3, a place for
    sessions that must outlive the lazy pipeline (`cleanup`), its clock, and where reports go."""

    run_id: str
    store: VersionStore
    version: str
    s3: S3Config
    input_rows: int
    cleanup: ExitStack
    clock: StageClock
    reports: dict[str, StageReport] = field(default_factory=dict)
    usage: Callable[[], Usage] | None = None  # set by the stage that calls an LLM; read after the write
    # the run's LLM session (soulray/llm/session.py), opened by the rewrite: a later stage that calls an
    # LLM (the quality gate) goes through the same broker, cache, budget and accounting
    llm: Any = None
    later: list[Callable[[], StageReport]] = field(default_factory=list)

    def report(self, report: StageReport) -> None:
        self.reports[report.name] = report

    def report_after_write(self, make: Callable[[], StageReport]) -> None:
        """A streaming stage whose facts are only known once every row went through (counted by its
        actors): `make` is called after the write."""
        self.later.append(make)


class Stage(Protocol):
    """One step of a pipeline. `apply` adds its work to the lazy `dataset` and returns it: it marks the
    rows it drops (reject_stage = `name`, a reason, a detail) and never removes one; it may report facts
    of itself (`context.report`) and time its batch function (`context.clock.wrap`)."""

    name: str

    def apply(self, dataset: ray.data.Dataset, context: Context) -> ray.data.Dataset: ...


@runtime_checkable
class Checks(Protocol):
    """A stage that also checks the built manifest (raises to refuse publishing)."""

    def check(self, manifest: Manifest) -> None: ...


@dataclass(frozen=True)
class Lineage:
    """What a source read: its files (the manifest's `inputs`) and its rows."""

    inputs: list[InputFile]
    rows: int


class Source(Protocol):
    """Where rows come from: `plan` on the driver (checks, lineage; raises SourceError naming the file),
    `read` the rows as a Dataset of working rows (WORKING_UNIT or WORKING_DIALOGUE)."""

    def plan(self, s3: S3Config) -> Lineage: ...  # raises SourceError naming the file

    def read(self, context: Context) -> ray.data.Dataset: ...


@dataclass(frozen=True)
class TableSource:
    """Rows already in memory (e.g. an imported corpus), read as blocks of `block_rows`."""

    table: pa.Table
    block_rows: int = 5_000

    def plan(self, s3: S3Config) -> Lineage:
        return Lineage(inputs=[], rows=self.table.num_rows)

    def read(self, context: Context) -> ray.data.Dataset:
        import ray.data

        starts = range(0, max(self.table.num_rows, 1), self.block_rows)
        return ray.data.from_arrow([self.table.slice(start, self.block_rows) for start in starts])


@dataclass(frozen=True)
class Pipeline:
    job: str  # the manifest's `job`
    source: Source
    stages: list[Stage]
    data_schema: pa.Schema  # what the published shards hold


@dataclass(frozen=True)
class JobSettings:
    """The parts of a job's config `run` needs; `config` itself is recorded (secrets redacted)."""

    dataset: str
    storage: StorageConfig
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    limit: int | None = None
    config: BaseModel | None = None
    version_prefix: str | None = None  # version ids `<prefix>-<run id>` instead of UTC time + run id

    @classmethod
    def of(cls, config: BaseModel) -> JobSettings:
        """From a job config with the usual fields (dataset, storage, s3, ray, limit): regenerate, clean."""
        return cls(dataset=config.dataset, storage=config.storage, s3=config.s3, ray=config.ray, limit=config.limit,
                   config=config)


@dataclass(frozen=True)
class RunResult:
    manifest: Manifest
    version_uri: str


# -- running ----------------------------------------------------------------------------------------------
def run(pipeline: Pipeline, *, settings: JobSettings) -> RunResult:
    """Plan, apply every stage, write the shards, build, check and commit the manifest."""
    started = time.perf_counter()
    with start(pipeline, settings=settings) as running:
        dataset, context, plan = running.dataset, running.context, running.plan
        target = ShardTarget(version_uri=context.store.version_uri(context.version), run_id=context.run_id,
                             data_schema=pipeline.data_schema, s3=settings.s3,
                             max_shard_bytes=settings.storage.max_shard_mb * 1024 * 1024)
        phase = time.perf_counter()
        shard_facts = write_shards(dataset, target, rows_per_shard=settings.storage.rows_per_shard)
        running.timings["pipeline_s"] = time.perf_counter() - phase
        usage = context.usage() if context.usage else None
        for make in context.later:
            context.report(make())
        reports = _with_busy_times(pipeline.stages, context)
    manifest = build_manifest(
        store=context.store, version=context.version, run_id=context.run_id, job=pipeline.job,
        config=redact_tree(settings.config.model_dump(mode="json")) if settings.config else {},
        config_hash=config_hash(settings.config) if settings.config else "-",
        inputs=plan.inputs, input_rows=context.input_rows, data_schema=pipeline.data_schema, shard_facts=shard_facts,
        timings_s={**running.timings, "total_s": time.perf_counter() - started}, usage=usage, stages=reports,
    )
    for stage in pipeline.stages:  # before anything of the version (its report) is written
        if isinstance(stage, Checks):
            stage.check(manifest)
    manifest = publish(context.store, manifest)
    return RunResult(manifest=manifest, version_uri=context.store.version_uri(context.version))


@dataclass
class Running:
    dataset: ray.data.Dataset
    context: Context
    plan: Lineage
    timings: dict[str, float]
    cleanup: ExitStack

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup.close()


def start(pipeline: Pipeline, *, settings: JobSettings, stop_before: str | None = None) -> Running:
    """Everything up to the write: the source planned and read, the stages applied in order (all, or
    those before `stop_before`: a dry run estimates there). Use as a context manager: sessions the
    stages opened close on exit."""
    from soulray.runtime import init_ray, refuse_secrets_in_runtime_env

    if settings.config is not None:
        check_named_secrets(settings.config)  # before Ray or any pipeline starts: fails in a second, naming the key
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    store = VersionStore(settings.storage.root, settings.dataset, s3=settings.s3)
    version = settings.storage.version or (f"{settings.version_prefix}-{run_id[:8]}" if settings.version_prefix
                                      else new_version_id(run_id))
    store.require_new(version)
    log.info("run %s: publishing %s/%s", run_id, settings.dataset, version)
    plan = pipeline.source.plan(settings.s3)
    timings = {"plan_s": time.perf_counter() - started}

    init_ray(settings.ray)
    refuse_secrets_in_runtime_env(secret_env_names(settings.config) if settings.config is not None else [])
    cleanup = ExitStack()
    input_rows = plan.rows if settings.limit is None else min(plan.rows, settings.limit)
    context = Context(run_id=run_id, store=store, version=version, s3=settings.s3, input_rows=input_rows,
                      cleanup=cleanup, clock=StageClock.start())
    cleanup.callback(context.clock.stop)
    try:
        dataset = pipeline.source.read(context)
        if settings.limit is not None:
            dataset = dataset.limit(settings.limit)
        for stage in pipeline.stages:
            if stage.name == stop_before:
                break
            dataset = stage.apply(dataset, context)
    except BaseException:
        cleanup.close()
        raise
    return Running(dataset=dataset, context=context, plan=plan, timings=timings, cleanup=cleanup)


def _with_busy_times(stages: list[Stage], context: Context) -> dict[str, StageReport]:
    """Each stage's report, with the busy seconds its clock counted, in pipeline order."""
    busy = context.clock.totals()
    names = [name for name in busy if name not in {stage.name for stage in stages}]  # the source's
    reports = {}
    for name in names + [stage.name for stage in stages]:
        report = context.reports.get(name, StageReport(name=name))
        if name in busy:
            seconds, batches = busy[name]
            report = report.model_copy(update={"seconds": {"busy": seconds, **report.seconds}, "batches": batches})
        if report.seconds or report.dedup or report.gate:
            reports[name] = report
    return reports


# -- timing -----------------------------------------------------------------------------------------------
class _Totals:
    """The clock's actor: busy seconds and batch calls per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.batches: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.batches[stage] = self.batches.get(stage, 0) + 1

    def totals(self) -> dict[str, tuple[float, int]]:
        return {stage: (seconds, self.batches[stage]) for stage, seconds in self.seconds.items()}


class StageClock:
    """Busy time per stage, summed over Ray tasks and actors: `wrap` a stage's batch function (or
    `wrap_class` its callable class) and every call adds its seconds to a small actor. One actor call per
    batch (blocks of thousands of rows; rewrite batches of tens), waited for so that no time is lost
    when the driver reads the totals."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    @classmethod
    def start(cls) -> StageClock:
        import ray

        return cls(ray.remote(num_cpus=0, enable_task_events=False)(_Totals).remote())  # a call per batch: no events

    def stop(self) -> None:
        import ray

        ray.kill(self.actor)

    def totals(self) -> dict[str, tuple[float, int]]:
        import ray

        return ray.get(self.actor.totals.remote())

    def wrap(self, fn: Callable[..., Any], *, stage: str, kwargs: dict[str, Any]) -> tuple[Callable[..., Any], dict]:
        """`fn` and its `fn_kwargs` for `map_batches`, timed as `stage`."""
        return _named_call(fn.__name__), {"fn": fn, "stage": stage, "actor": self.actor, "kwargs": kwargs}

    def wrap_class(self, cls: type, *, stage: str, kwargs: dict[str, Any]) -> tuple[type, dict]:
        """An async callable class and its `fn_constructor_kwargs`, timed as `stage`."""
        # a subclass named as `cls`: Ray names operators, actor processes and log lines after it
        # ("MapWorker(MapBatches(Rewriter))"), which operators and tools that find actors by name rely on
        named = type(cls.__name__, (_TimedAsync,), {"__qualname__": cls.__qualname__})
        return named, {"cls": cls, "stage": stage, "actor": self.actor, "kwargs": kwargs}


def _named_call(name: str) -> Callable[..., Any]:
    """`_timed_call` under the wrapped function's name (Ray names the operator after it)."""

    def timed(batch: Any, **kwargs: Any) -> Any:
        return _timed_call(batch, **kwargs)

    timed.__name__ = timed.__qualname__ = name
    return timed


def _timed_call(batch: Any, *, fn: Callable[..., Any], stage: str, actor: Any, kwargs: dict[str, Any]) -> Any:
    started = time.perf_counter()
    out = fn(batch, **kwargs)
    if inspect.isgenerator(out):
        return _timed_iter(out, started, stage, actor)
    _add(actor, stage, time.perf_counter() - started)
    return out


def _timed_iter(out: Any, started: float, stage: str, actor: Any) -> Any:
    """A generator's time: inside it, not while its consumer works on what it yielded."""
    busy = 0.0
    while True:
        try:
            item = next(out)
        except StopIteration:
            break
        busy += time.perf_counter() - started
        yield item
        started = time.perf_counter()
    _add(actor, stage, busy + time.perf_counter() - started)


def _add(actor: Any, stage: str, seconds: float) -> None:
    import ray

    ray.get(actor.add.remote(stage, seconds))


class _TimedAsync:
    def __init__(self, *, cls: type, stage: str, actor: Any, kwargs: dict[str, Any]) -> None:
        self.inner, self.stage, self.actor = cls(**kwargs), stage, actor

    async def __call__(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = await self.inner(batch)
        await self.actor.add.remote(self.stage, time.perf_counter() - started)
        return out
