"""The rewrite's calls through the Batch API (rewrite.mode: batch), on the driver, before the rewrite stage.

Each row's first call goes into a batch; its answer goes through the same parser and re-ask rules as
online (soulray/rewrite/parse.py, rewrite.max_reasks): a malformed one is asked again, with the next
attempt's seed, in a later batch. Answers are in the response cache when this returns, so the rewrite
stage then runs as always over the rows and finds every answer there (the same parse, filters and
accounting as online); the calls that ended without an answer are returned, and the stage rejects their
rows with the reason (the provider's error code, `batch_expired` after the retries, `budget_exhausted`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from soulray.llm.batch import BatchCall, BatchDriver, BatchFailure, custom_id
from soulray.llm.cache import call_key
from soulray.llm.client import decoding_of
from soulray.llm.tokens import count_message_tokens, estimate_tokens
from soulray.rewrite.parse import parse_completion
from soulray.rewrite.prompts import load_template
from soulray.rewrite.settings import RewriteConfig
from soulray.rewrite.stage import route_model, source_chars

log = logging.getLogger(__name__)


@dataclass
class _Row:
    record_id: str
    model: str
    messages: list[dict[str, str]]
    chars: int
    attempt: int = 0
    call: BatchCall | None = field(default=None, repr=False)


def rewrite_in_batches(units: Iterable[dict[str, Any]], *, config: RewriteConfig, namespace: str, cache: Any,
                       driver: BatchDriver) -> dict[str, BatchFailure]:
    """Answer every unit's calls through batches (answers land in `cache`); returns the calls (by
    call_key) that ended without one. Units already rejected upstream are skipped."""
    template = load_template(config.prompt)
    decoding = decoding_of(config)
    open_calls: dict[str, _Row] = {}
    for unit in units:
        if unit["reject_reason"]:
            continue
        row = _Row(unit["record_id"], route_model(unit["record_id"], config),
                   template.render(unit["question"], unit["description"], unit["answer"]), source_chars(unit))
        _advance(row, None, config=config, namespace=namespace, decoding=decoding, cache=cache, driver=driver,
                 open_calls=open_calls)
    log.info("rewrite (batch mode): %d calls to answer through batches", len(open_calls))
    failures: dict[str, BatchFailure] = {}
    while open_calls:
        wanted = []
        for key, row in list(open_calls.items()):
            failure = driver.final_failure(key)
            if failure is not None:
                failures[key] = failure
                del open_calls[key]
            elif not driver.is_flying(key):
                wanted.append(row.call)
        if not open_calls:
            break
        answers = driver.step(wanted)
        for key, answer in answers:
            row = open_calls.pop(key, None)
            if row is not None:
                _advance(row, answer, config=config, namespace=namespace, decoding=decoding, cache=cache,
                         driver=driver, open_calls=open_calls)
        if not answers:
            driver.wait()
    return failures


def _advance(row: _Row, answer: dict[str, Any] | None, *, config: RewriteConfig, namespace: str,
             decoding: dict[str, Any], cache: Any, driver: BatchDriver, open_calls: dict[str, _Row]) -> None:
    """Take `row` as far as the answers at hand go (this one, then the cache's): done when an answer
    parses or the re-asks are spent; else its next call waits in `open_calls`."""
    while True:
        key = call_key(row.messages, namespace, row.model, decoding, row.attempt)
        found = answer if answer is not None else cache.get(key)
        answer = None
        if found is None:
            prompt_tokens, completion_tokens = estimate_tokens(row.messages, row.chars, config.max_tokens)
            body = {"model": row.model, "messages": row.messages, "seed": int(key[:8], 16),
                    **{name: value for name, value in decoding.items() if value is not None}}
            row.call = BatchCall(call_key=key, custom_id=custom_id(row.record_id, row.attempt), model=row.model,
                                 body=body, prompt_tokens=count_message_tokens(row.messages),
                                 reserved_usd=driver.price(row.model, prompt_tokens, completion_tokens))
            open_calls[key] = row
            return
        parsed = parse_completion(found["completion"], found["finish_reason"], min_turns=config.min_turns,
                                  max_turns=config.max_turns)
        if parsed.ok or row.attempt >= config.max_reasks:
            return
        row.attempt += 1
