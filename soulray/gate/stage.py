"""The quality gate as a stage of the regenerate job's pipeline (after dialogue dedup): an actor pool
whose calls go through the rewrite's LLM session, so its quota broker, response cache, budget and
accounting (two `LLMCaller`s: the judge under the rubric's version, the reviser under the revision
prompt's, each its own cache section and completion-length lane). The row logic is
soulray/gate/core.py's; this file is plumbing.

`QualityGateStage` is a pipeline `Stage` (soulray/pipeline.py): its busy time through `context.clock`,
its facts (GateFacts) a StageReport made after the write, from the broker's tallies.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from soulray.errors import ConfigError
from soulray.evaluate.judge import Rubric, load_rubric
from soulray.filters import DIALOGUE_STAGE, build_chain
from soulray.filters.registry import FilterSpec
from soulray.gate.core import REVISION_VERSION, GateTools, gate_facts, gate_row, tally
from soulray.gate.settings import QualityGateSettings
from soulray.llm.client import Completion, Failure, LLMCaller, LLMRun
from soulray.llm.tokens import estimate_tokens
from soulray.rewrite.parse import parse_completion
from soulray.rewrite.settings import RewriteConfig
from soulray.schema import QUALITY_GATE, WORKING_DIALOGUE
from soulray.store.manifest import StageReport

if TYPE_CHECKING:
    import ray.data

    from soulray.pipeline import Context

RATING_MAX_TOKENS = 512  # five integers and a sentence or two of critique
PLACEHOLDERS = ("{source}", "{dialogue}")


def load_gate_rubric(settings: QualityGateSettings) -> Rubric:
    return load_rubric(settings.rubric, placeholders=PLACEHOLDERS)


def _caller_config(config: RewriteConfig, settings: QualityGateSettings, max_tokens: int) -> RewriteConfig:
    models = [type(config.models[0])(name=settings.model)] if settings.model else config.models[:1]
    return config.model_copy(update={"models": models, "temperature": settings.temperature, "top_p": None,
                                     "max_tokens": max_tokens})


class QualityGate:
    """The gate's async callable class for `map_batches` (one per actor)."""

    def __init__(self, *, config: RewriteConfig, run: LLMRun, settings: QualityGateSettings,
                 filters: list[FilterSpec]) -> None:
        rubric = load_gate_rubric(settings)
        run = dataclasses.replace(run, cache_index=None)  # the driver's index is the rewrite's section
        self.judge = LLMCaller(config=_caller_config(config, settings, RATING_MAX_TOKENS), run=run,
                               namespace=rubric.version)
        self.reviser = LLMCaller(config=_caller_config(config, settings, settings.max_tokens), run=run,
                                 namespace=REVISION_VERSION)
        self.model = self.judge.config.models[0].name
        chain = build_chain(filters, stage=DIALOGUE_STAGE, kind="dialogue")
        self.min_turns, self.max_turns = config.min_turns, config.max_turns
        self.tools = GateTools(ask=self._ask, parse=self._parse, refilter=lambda row: _refilter(chain, row),
                               rubric=rubric, settings=settings)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        results = await asyncio.gather(*(self._row(row) for row in batch.to_pylist()))
        await self.judge.finish_batch()
        await self.reviser.finish_batch()
        self.judge.broker.tally.remote(tally(outcome for _, outcome in results))
        return pa.Table.from_pylist([row for row, _ in results], schema=batch.schema)

    async def _row(self, row: dict[str, Any]):
        tools = dataclasses.replace(self.tools, ask=lambda messages, kind, attempt: self._ask(
            messages, kind, attempt, record_id=row["record_id"], expected_chars=len(row["source_answer"] or "")))
        return await gate_row(row, tools)

    async def _ask(self, messages: list[dict[str, str]], kind: str, attempt: int, *, record_id: str = "",
                   expected_chars: int = 0) -> Completion | Failure:
        caller = self.judge if kind == "judge" else self.reviser
        async with caller.semaphore:
            # a rating is short (expected 0 source characters: the 200-token floor); a revision is as long
            # as a rewrite of the same answer
            return await caller.complete(record_id=record_id, model=self.model, messages=messages, attempt=attempt,
                                         expected_chars=expected_chars if kind == "revision" else 0, kind=kind)

    def _parse(self, text: str, finish_reason: str):
        return parse_completion(text, finish_reason, min_turns=self.min_turns, max_turns=self.max_turns)


def _refilter(chain, row: dict[str, Any]) -> dict[str, Any]:
    """One revised row through the dialogue filter chain (its text rules, drops, scores and flags)."""
    return chain(pa.Table.from_pylist([row], schema=WORKING_DIALOGUE)).to_pylist()[0]


class QualityGateStage:
    """The gate on the pipeline's list; off (the dataset as it came) unless `settings.enabled`. Its calls
    go through the run's LLM session (`context.llm`, the rewrite's), so it comes after the rewrite."""

    name = QUALITY_GATE

    def __init__(self, settings: QualityGateSettings, *, filters: list[FilterSpec]) -> None:
        self.settings, self.filters = settings, filters

    def apply(self, dataset: ray.data.Dataset, context: Context) -> ray.data.Dataset:
        import ray.data

        if not self.settings.enabled:
            return dataset
        session = context.llm
        if session is None:
            raise ConfigError("quality_gate needs the rewrite (rewrite.enabled): it calls through its LLM session")
        rubric = load_gate_rubric(self.settings)  # a bad rubric fails here, before any actor starts
        session.other_sections += [rubric.version, REVISION_VERSION]  # compacted with the rewrite's
        config = session.config
        fn, kwargs = context.clock.wrap_class(QualityGate, stage=self.name, kwargs={
            "config": config, "run": session.run, "settings": self.settings, "filters": self.filters})
        context.report_after_write(lambda: StageReport(name=self.name, gate=gate_facts(
            session.tallies(), rubric_version=rubric.version, threshold=self.settings.threshold)))
        return dataset.map_batches(
            fn, fn_constructor_kwargs=kwargs, batch_size=config.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.actors), num_cpus=config.actor_num_cpus)


def estimate_gate(source_chars: int, *, config: RewriteConfig,
                  settings: QualityGateSettings) -> dict[str, tuple[float, float]]:
    """Dry run, one dialogue: expected (prompt, completion) tokens per call kind — a rating, and with
    `revision_share` a revision and a second rating. The dialogue is about as long as its rewrite."""
    dialogue_tokens = estimate_tokens([], source_chars, config.max_tokens)[1]
    rubric_tokens = len(load_gate_rubric(settings).template)  # ~1 token a character of the Chinese rubric
    rating = (rubric_tokens + dialogue_tokens + 2 * source_chars, 100)
    share = settings.revision_share if settings.revise else 0.0
    return {"judge": (rating[0] * (1 + share), rating[1] * (1 + share)),
            "revision": (share * (dialogue_tokens + 2 * source_chars + 400), share * dialogue_tokens)}
