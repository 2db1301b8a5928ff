"""The rewrite stage: a Ray Data actor pool of async callables, each asking an OpenAI-compatible API
through soulray.llm (quota broker, retries, response cache, re-asks). Every row comes back exactly
once: as a dialogue, or marked with a reject reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from soulray.errors import SoulrayError
from soulray.fs import S3Config
from soulray.gate.settings import QualityGateSettings
from soulray.llm.client import Completion, LLMCaller, LLMRun
from soulray.llm.pricing import batch_price, cost_of
from soulray.llm.session import LLMSession
from soulray.llm.tokens import count_message_tokens, estimate_tokens
from soulray.repair import FLAG_PREFIX
from soulray.rewrite.parse import parse_completion
from soulray.rewrite.persona import (
    PROFILE_VERSION,
    Persona,
    check_template,
    parse_profile,
    profile_prompt,
    rule_persona,
)
from soulray.rewrite.prompts import load_template
from soulray.rewrite.settings import RewriteConfig
from soulray.schema import DEDUP_SOURCE, FILTER_SOURCE, NORMALIZE, PARSE, REWRITE, WORKING_DIALOGUE
from soulray.store.manifest import Counts

if TYPE_CHECKING:
    import ray.data

    from soulray.store import VersionStore

STAGE, PARSE_STAGE = REWRITE, PARSE

# Reasons of rewrite rejects that say the endpoint failed, not the content: no answer was had at all.
# (Budget stops are the operator's choice; parse rejects and filter drops are about the text.)
INFRASTRUCTURE_FAILURES = ("retries_exhausted", "no_usable_key", "http_401", "http_403", "http_404")


class RewriteOutage(SoulrayError):
    """Too many rewrite calls failed for infrastructure reasons to publish the run."""


def check_failures(counts: Counts, *, max_share: float, paid_calls: int) -> None:
    """Refuse to publish (RewriteOutage) when more than `max_share` of the rows sent to the rewrite
    failed for infrastructure reasons. `counts` are a manifest's: rows in, and rejects by stage."""
    by_stage = counts.by_stage
    failed = {reason: count for reason, count in by_stage.get(STAGE, {}).items()
              if reason in INFRASTRUCTURE_FAILURES or reason.startswith(("http_5", "batch_"))}
    before = sum(sum(by_stage.get(stage, {}).values()) for stage in (NORMALIZE, FILTER_SOURCE, DEDUP_SOURCE))
    sent = counts.input_rows - before
    if not failed or sum(failed.values()) <= max_share * sent:
        return
    total = sum(failed.values())
    raise RewriteOutage(
        f"refusing to publish: {total} of {sent} rows sent to the rewrite ({100 * total / sent:.1f}%) failed for "
        f"infrastructure reasons ({', '.join(f'{reason} {n}' for reason, n in sorted(failed.items()))}), more than "
        f"rewrite.max_failure_share {100 * max_share:g}%. Nothing was published and `latest` did not move; the "
        f"{paid_calls} calls paid this run are in the response cache, so a rerun once the endpoint works pays "
        "only for the rest")


def route_model(record_id: str, config: RewriteConfig) -> str:
    """Deterministic model mix (e.g. 99% gpt-3.5-turbo / 1% gpt-4): a rerun routes a row the same way."""
    point = int(record_id[16:24], 16) / 0x1_0000_0000 * sum(m.share for m in config.models)
    for model in config.models:
        point -= model.share
        if point < 0:
            return model.name
    return config.models[-1].name


class Rewriter(LLMCaller):
    """The rewrite stage's async callable class, run by `map_batches` in an actor pool."""

    def __init__(self, *, config: RewriteConfig, run: LLMRun) -> None:
        self.template = load_template(config.prompt)
        check_template(self.template, config.persona)
        super().__init__(config=config, run=run, namespace=self.template.version)
        self.parse = partial(parse_completion, min_turns=config.min_turns, max_turns=config.max_turns)
        # rewrite.persona: the profile calls under their own cache section and length lane (a profile is
        # ~100 tokens, a rewrite ~1,500: one learned max_tokens for both would fit neither)
        self.profiles = (LLMCaller(config=config.model_copy(update={"max_tokens": config.persona.max_tokens}),
                                   run=dataclasses.replace(run, cache_index=None), namespace=PROFILE_VERSION)
                         if config.persona.enabled and config.persona.source == "llm" else None)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = await asyncio.gather(*(self._row(row) for row in batch.to_pylist()))
        await self.finish_batch()
        if self.profiles is not None:
            await self.profiles.finish_batch()
        self.broker.progress.remote(len(rows))  # for the driver's progress line; nothing waits on it
        return pa.Table.from_pylist(rows, schema=WORKING_DIALOGUE)

    async def _row(self, unit: dict[str, Any]) -> dict[str, Any]:
        row = _dialogue_row(unit, self.template.version)
        if unit["reject_reason"]:
            return row
        row["model"] = route_model(unit["record_id"], self.config)
        persona = await self._persona(unit, row) if self.config.persona.enabled else None
        row["persona"] = persona.to_json() if persona else None
        messages = self.template.render(unit["question"], unit["description"], unit["answer"],
                                        persona=persona.describe() if persona else None)
        answer = await self.ask(record_id=unit["record_id"], model=row["model"], parse=self.parse,
                                messages=messages, reasks=self.config.max_reasks, expected_chars=source_chars(unit))
        # on top of the profile call's cost, if any (_persona)
        row.update(attempts=answer.attempts, api_key_name=answer.key,
                   prompt_tokens=row["prompt_tokens"] + answer.prompt_tokens,
                   completion_tokens=row["completion_tokens"] + answer.completion_tokens,
                   cost_usd=row["cost_usd"] + answer.cost_usd)
        if answer.failure is not None:
            return _reject(row, STAGE, answer.failure.reason, answer.failure.detail)
        parsed = answer.verdict
        if not parsed.ok:
            return _reject(row, PARSE_STAGE, parsed.reason, parsed.detail)
        return {**row, "messages": parsed.messages, "flags": [FLAG_PREFIX + kind for kind in parsed.repairs] or None}

    async def _persona(self, unit: dict[str, Any], row: dict[str, Any]) -> Persona:
        """The client profile: one profile call (its cost on the row), else the rule-based profile (a
        failed or unparseable call costs the row nothing more; a budget stop then stops the rewrite)."""
        if self.profiles is not None:
            async with self.profiles.semaphore:
                result = await self.profiles.complete(
                    record_id=unit["record_id"], model=row["model"],
                    messages=profile_prompt(unit["question"], unit["description"]), attempt=0, expected_chars=60,
                    kind="persona")
            if isinstance(result, Completion):
                row["prompt_tokens"] += result.prompt_tokens
                row["completion_tokens"] += result.completion_tokens
                row["cost_usd"] += result.cost_usd
                persona = parse_profile(result.text)
                if persona is not None:
                    return persona
        return rule_persona(unit["question"], unit["description"], unit["topic"])


class RewriteSession(LLMSession):
    """The LLM session of a rewrite run: the response cache's section is the prompt's version. With
    rewrite.mode batch, every row's calls are answered through the Batch API first (soulray/rewrite/batch.py)
    and the stage then finds them all in the cache."""

    def __init__(self, config: RewriteConfig, *, run_id: str, store: VersionStore, s3: S3Config) -> None:
        # fail on a bad prompt (or one that does not fit rewrite.persona) before anything starts
        template = load_template(config.prompt)
        check_template(template, config.persona)
        super().__init__(config, run_id=run_id, store=store, s3=s3, namespace=template.version,
                         batch=config.batch)
        if config.persona.enabled:
            self.other_sections.append(PROFILE_VERSION)  # the profile calls' cache section
        self.batch_driver: Any = None  # rewrite.mode batch: the BatchDriver, once it has started
        self.batch_wall_s: float | None = None

    def apply(self, pipeline: ray.data.Dataset, *, expected_rows: int | None = None,
              clock: Any = None) -> ray.data.Dataset:
        """The rewrite stage on `pipeline`; with `expected_rows`, a progress line is logged every
        PROGRESS_EVERY_S while the pipeline runs (rows, rate, ETA, calls, tokens, spend); with `clock`
        (soulray.pipeline.StageClock), its busy time is counted."""
        import ray.data

        if expected_rows is not None:
            self.log_progress(expected_rows)
        config = self.config
        if config.mode == "batch":
            pipeline = self._answer_in_batches(pipeline)
        fn, kwargs = Rewriter, {"config": config, "run": self.run}
        if clock is not None:
            fn, kwargs = clock.wrap_class(fn, stage=STAGE, kwargs=kwargs)
        return pipeline.map_batches(
            fn, fn_constructor_kwargs=kwargs, batch_size=config.batch_size,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.actor_num_cpus,
        )

    def _answer_in_batches(self, pipeline: ray.data.Dataset) -> ray.data.Dataset:
        """rewrite.mode batch: answer every row's calls through the Batch API on the driver (journaled,
        resumable), so the stage after finds them all in the cache; returns the rows, materialised."""
        import dataclasses
        import time

        import ray

        from soulray.llm.batch import BatchDriver
        from soulray.llm.batch_journal import BatchJournal
        from soulray.llm.cache import ResponseCache, build_index
        from soulray.rewrite.batch import rewrite_in_batches

        pipeline = pipeline.materialize()  # walked twice: here for the calls, then by the stage
        cache_uri = self.store.cache_uri()
        cache = ResponseCache(cache_uri, self.namespace, s3=self.s3, index=ray.get(self.run.cache_index))
        self.batch_driver = BatchDriver(keys=self.config.keys, base_url=self.base_url, settings=self.config.batch,
                                        journal=BatchJournal(cache_uri, self.namespace, s3=self.s3), cache=cache,
                                        price=batch_price(self.config.prices, self.config.batch),
                                        budget_usd=self.config.budget_usd)
        units = (row for batch in pipeline.iter_batches(batch_size=4096, batch_format="pyarrow")
                 for row in batch.select(["record_id", "question", "description", "answer", "reject_reason"]).to_pylist())
        started = time.monotonic()
        failures = rewrite_in_batches(units, config=self.config, namespace=self.namespace, cache=cache,
                                      driver=self.batch_driver)
        self.batch_wall_s = time.monotonic() - started
        index = build_index(cache_uri, self.namespace, s3=self.s3)
        self.run = dataclasses.replace(self.run, cache_index=ray.put(index), batch_failures=ray.put(failures))
        return pipeline

    def drain(self) -> str:
        """On a stop signal: as online; in batch mode the calls were paid through batches (the broker saw
        none): their answers downloaded this run, and those flushed to the cache. A batch not yet recorded
        done in the journal is downloaded again by the next run (paid once), as are batches still running."""
        note = super().drain()
        driver = self.batch_driver
        if driver is None:
            return note
        paid, saved, live = driver.stopped()
        return (f"{paid} rewrite calls were paid this run (through batches) and {saved} answers are saved in the "
                f"response cache; the next run collects the {live} batches not yet collected")

    def usage(self) -> dict[str, Any]:
        """The broker's usage; in batch mode the calls were paid through batches, not the broker."""
        usage = super().usage()
        if self.batch_driver is None:
            return usage
        batches = self.batch_driver.usage()
        keys, models = batches["keys"], batches["models"]
        tokens = {"prompt": int(sum(k["prompt_tokens"] for k in keys.values())),
                  "completion": int(sum(k["completion_tokens"] for k in keys.values()))}
        return {**usage, "keys": keys, "models": models, "tokens": tokens, "cost_usd": batches["batches"]["spent_usd"],
                "batches": {**batches["batches"], "wall_s": self.batch_wall_s}}


def source_chars(unit: dict[str, Any]) -> int:
    """What a rewrite's length follows: the dialogue retells the question (its first user turn) and the
    answer. The answer alone left the completion's length spread twice as wide (coefficient of
    variation 0.20 vs 0.12 on the SMILECHAT sample), and every reservation had to hold that spread."""
    return len(unit["question"]) + len(unit["description"] or "") + len(unit["answer"])


def estimate_batch(batch: pa.Table, *, config: RewriteConfig, gate: QualityGateSettings | None = None) -> pa.Table:
    """Dry run: what rewriting these rows would cost, per model, without calling anything, online and
    through the Batch API (rewrite.mode batch, at the batch price); the persona's and the quality gate's
    calls (`gate`: its settings when on) as their own lines, "<model> (<kind>)"."""
    from soulray.gate.stage import estimate_gate  # the gate builds on the rewrite's parser and settings

    template, batch_cost = load_template(config.prompt), batch_price(config.prices, config.batch)
    totals: dict[str, list[float]] = {}

    def add(label: str, model: str, prompt: float, completion: float) -> None:
        row = totals.setdefault(label, [0, 0, 0, 0.0, 0.0])
        row[0] += 1
        row[1] += prompt
        row[2] += completion
        row[3] += cost_of(config.prices, model, prompt, completion)
        row[4] += batch_cost(model, prompt, completion)

    for unit in batch.to_pylist():
        if unit["reject_reason"]:
            continue
        model = route_model(unit["record_id"], config)
        persona = rule_persona(unit["question"], unit["description"], unit["topic"]) if template.uses_persona else None
        messages = template.render(unit["question"], unit["description"], unit["answer"],
                                   persona=persona.describe() if persona else None)
        add(model, model, *estimate_tokens(messages, source_chars(unit), config.max_tokens))
        if persona is not None and config.persona.source == "llm":
            add(f"{model} (persona)", model, count_message_tokens(profile_prompt(unit["question"], unit["description"])),
                config.persona.max_tokens // 2)
        if gate is not None:
            gate_model = gate.model or config.models[0].name
            for kind, (prompt, completion) in estimate_gate(source_chars(unit), config=config, settings=gate).items():
                add(f"{gate_model} ({kind})", gate_model, prompt, completion)
    return pa.table({"model": list(totals), "rows": [int(v[0]) for v in totals.values()],
                     "prompt_tokens": [int(v[1]) for v in totals.values()],
                     "completion_tokens": [int(v[2]) for v in totals.values()],
                     "cost_usd": [float(v[3]) for v in totals.values()],
                     "batch_cost_usd": [float(v[4]) for v in totals.values()]},
                    schema=pa.schema([("model", pa.string()), ("rows", pa.int64()), ("prompt_tokens", pa.int64()),
                                      ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
                                      ("batch_cost_usd", pa.float64())]))


def _dialogue_row(unit: dict[str, Any], prompt_version: str) -> dict[str, Any]:
    return {"id": unit["answer_id"], "record_id": unit["record_id"], "question_id": unit["question_id"],
            "topic": unit["topic"], "messages": None, "prompt_version": prompt_version, "model": None,
            "api_key_name": None, "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
            "source_file": unit["source_file"], "source_row": unit["source_row"],
            "reject_stage": unit["reject_stage"], "reject_reason": unit["reject_reason"],
            "reject_detail": unit["reject_detail"], "persona": None, "gate": None, "source_answer": unit["answer"]}


def _reject(row: dict[str, Any], stage: str, reason: str | None, detail: str | None) -> dict[str, Any]:
    return {**row, "reject_stage": stage, "reject_reason": reason or "unknown", "reject_detail": detail}
