"""Endpoint models and the judge, called through soulray.llm.

Both are `LLMCaller`s (soulray/llm/client.py), like the rewrite stage: the same cluster-wide quota
broker, retries, re-asks, response cache and per-key accounting as the rewrite, each under its own cache
namespace, so a rerun of an evaluation pays for nothing it already paid for. Each is an async callable class for `map_batches`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa

from soulray.evaluate.judge import DIMENSIONS, Rating, load_rubric, parse_rating
from soulray.llm.client import Failure, LLMCaller, LLMRun
from soulray.llm.settings import ApiConfig, CallConfig, ModelShare
from soulray.schema import EVAL_RESPONSE, JUDGE_SCORE

NEXT_TURN = "next-turn-v1"  # the cache namespace of endpoint generation (the messages are the history)
RUN_STRIDE = 1000  # judge run r, re-ask a is call attempt r·1000 + a: runs never share a cached answer


def api_config(api: ApiConfig, *, model: str, temperature: float, top_p: float | None,
               max_tokens: int) -> CallConfig:
    """The call settings for `model` with these decoding parameters."""
    return CallConfig(**api.model_dump(), models=[ModelShare(name=model)], temperature=temperature, top_p=top_p,
                         max_tokens=max_tokens)


def next_turn_namespace(seed: int) -> str:
    return f"{NEXT_TURN}-seed{seed}"


class EndpointGenerator(LLMCaller):
    """The next counselor turn from a chat model: the history as chat messages, one completion each."""

    def __init__(self, *, config: CallConfig, run: LLMRun, namespace: str, model_name: str,
                 system_prompt: str | None) -> None:
        super().__init__(config=config, run=run, namespace=namespace)
        self.model_name, self.endpoint_model = model_name, config.models[0].name
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = await asyncio.gather(*(self._respond(sample) for sample in batch.to_pylist()))
        await self.finish_batch()
        return pa.Table.from_pylist(rows, schema=EVAL_RESPONSE)

    async def _respond(self, sample: dict[str, Any]) -> dict[str, Any]:
        history = [{"role": message["role"], "content": message["content"]} for message in sample["history"]]
        async with self.semaphore:
            # a reply about as long as the reference sizes the reservation; the real usage settles it
            result = await self.complete(record_id=sample["sample_id"], model=self.endpoint_model,
                                         messages=self.system + history, attempt=0,
                                         expected_chars=len(sample["reference"]))
        row = {"sample_id": sample["sample_id"], "model": self.model_name, "response": "", "finish_reason": None,
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "error": None}
        if isinstance(result, Failure):
            return {**row, "error": _error(result)}
        return {**row, "response": result.text.strip(), "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "cost_usd": result.cost_usd}


class Judge(LLMCaller):
    """Rates responses (rows with sample_id, model, history, response) once per judge run, re-asking an
    unparseable rating; a rating that never parses keeps its row, without scores, with the reason."""

    def __init__(self, *, config: CallConfig, run: LLMRun, rubric: str, runs: int, max_reasks: int) -> None:
        self.rubric = load_rubric(rubric)
        super().__init__(config=config, run=run, namespace=self.rubric.version)
        self.judge_model, self.runs, self.max_reasks = config.models[0].name, runs, max_reasks

    async def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        rows = await asyncio.gather(*(self._rate(item, run) for item in items for run in range(self.runs)))
        await self.finish_batch()
        return pa.Table.from_pylist(rows, schema=JUDGE_SCORE)

    async def _rate(self, item: dict[str, Any], run: int) -> dict[str, Any]:
        messages = self.rubric.render(item["history"], item["response"])
        row = {"sample_id": item["sample_id"], "model": item["model"], "run": run, **dict.fromkeys(DIMENSIONS),
               "judge_model": self.judge_model, "rubric_version": self.rubric.version, "attempts": 0,
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "error": None}
        answer = await self.ask(record_id=item["sample_id"], model=self.judge_model, messages=messages,
                                parse=parse_rating, reasks=self.max_reasks, first_attempt=run * RUN_STRIDE)
        row.update(attempts=answer.attempts, prompt_tokens=answer.prompt_tokens,
                   completion_tokens=answer.completion_tokens, cost_usd=answer.cost_usd)
        if answer.failure is not None:
            return {**row, "error": _error(answer.failure)}
        rating = answer.verdict
        return {**row, **rating.scores} if rating.ok else {**row, "error": _error(rating)}


def _error(problem: Failure | Rating) -> str:
    return f"{problem.reason}: {problem.detail}"[:300]
