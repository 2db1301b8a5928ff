"""The quota ledger against the local server's limiter in simulated time: minutes of calls in a second.

Callers reserve from a `QuotaLedger`, start when told, are admitted or refused by
`LocalLLMServer.admit` (its token counting, charge rule and windows, with the simulation's clock), and
settle as the rewrite stage does (usage, our own count of the completion, finish_reason, headers); a
completion cut by `length` under a learned budget is asked again with twice the budget, as
`LLMCaller.complete` does. No HTTP, no Ray: the HTTP path is the stage's tests and the quota bench.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from soulray.llm.broker import CallShape, QuotaLedger
from soulray.llm.client import _remaining
from soulray.llm.tokens import count_tokens, estimate_tokens
from soulray.offline.server import LocalLLMServer
from soulray.rewrite.prompts import load_template
from soulray.rewrite.stage import source_chars
from tests.conftest import SMILECHAT_SAMPLE

MODEL = "gpt-3.5-turbo"


def smilechat_prompts(rows: int) -> list[tuple[list[dict[str, str]], int]]:
    """(messages, source characters) of the first `rows` real SMILECHAT Q&A pairs."""
    template = load_template("soulchat-v1")
    table = pq.read_table(SMILECHAT_SAMPLE / "qa.parquet", columns=["question", "answer"]).slice(0, rows)
    return [(template.render(row["question"], "", row["answer"]), source_chars({**row, "description": ""}))
            for row in table.to_pylist()]


@dataclass
class Outcome:
    calls: int = 0
    rate_limited: int = 0
    cut_by_length: int = 0
    rate_limited_at: list[tuple[float, str]] = field(default_factory=list)  # (time, ledger key)
    max_tokens_sent: list[int | None] = field(default_factory=list)


def simulate(server: LocalLLMServer, ledger: QuotaLedger, keys: dict[str, str], *, seconds: float,
             concurrency: int = 64, max_tokens: int = 4096, latency_s: tuple[float, float] = (0.2, 0.8),
             late_s: tuple[float, float] = (0.0, 0.0), rows: int = 2000, seed: int = 0) -> Outcome:
    """`keys`: the ledger's key name → the key the server knows. Callers go through the SMILECHAT rows
    in turn (round and round) until `seconds` of simulated time. `late_s`: how much later than planned a
    call reaches the server, and its settlement the ledger (drawn for each): in the job, the RPC that
    grants a call, the caller's sleep and the HTTP request, then the response, the 20 ms batching of
    settlements and their RPC."""
    prompts = smilechat_prompts(rows)
    rng, order, outcome = random.Random(seed), itertools.count(), Outcome()
    next_row = itertools.cycle(range(len(prompts)))
    events: list[tuple[float, int, tuple]] = []

    def push(at: float, action: tuple) -> None:
        heapq.heappush(events, (at, next(order), action))

    def late() -> float:
        return rng.uniform(*late_s) if late_s[1] > 0 else 0.0

    for _ in range(concurrency):
        push(0.0, ("reserve", next(next_row), 0))
    while events:
        now, _, action = heapq.heappop(events)
        if now > seconds:
            break
        if action[0] == "reserve":
            _, row, floor = action
            messages, chars = prompts[row]
            prompt, prior = estimate_tokens(messages, chars, max_tokens)
            shape = CallShape(prompt_tokens=prompt, completion_tokens=prior, max_tokens=max_tokens, min_max_tokens=floor)
            grant = ledger.reserve(MODEL, prompt + prior, 0.0, now=now, shape=shape)
            assert grant.stop is None, grant.stop
            if grant.id is None:
                push(now + grant.wait_s, action)
            else:
                push(now + grant.wait_s + late(), ("call", row, floor, grant))
        elif action[0] == "call":
            _, row, floor, grant = action
            outcome.calls += 1
            outcome.max_tokens_sent.append(grant.max_tokens)
            answer = server.admit(keys[grant.key], MODEL, prompts[row][0], max_tokens=grant.max_tokens, seed=row,
                                  now=now)
            if answer.wait_s or answer.burst:
                outcome.rate_limited += 1
                outcome.rate_limited_at.append((now, grant.key))
                push(now + late(), ("refused", row, floor, grant, answer))
            else:
                push(now + rng.uniform(*latency_s), ("done", row, grant, answer))
        elif action[0] == "refused":
            _, row, floor, grant, answer = action
            ledger.settle(grant.id, status="rate_limited", retry_after_s=answer.wait_s or None,
                          **_remaining(answer.headers), now=now)
            push(now, ("reserve", row, floor))
        elif action[0] == "done":
            _, row, grant, answer = action
            server.finish(answer)
            push(now + late(), ("settle", row, grant, answer))
        else:
            _, row, grant, answer = action
            ledger.settle(grant.id, status="ok", prompt_tokens=answer.prompt_tokens,
                          completion_tokens=answer.completion_tokens, own_completion_tokens=count_tokens(answer.completion),
                          finish_reason=answer.finish_reason, **_remaining(answer.headers), now=now)
            if answer.finish_reason == "length" and grant.max_tokens < max_tokens:
                outcome.cut_by_length += 1
                push(now, ("reserve", row, min(max_tokens, 2 * grant.max_tokens)))
            else:
                push(now, ("reserve", next(next_row), 0))
    return outcome


def utilisation(server: LocalLLMServer, server_key: str, *, rpm: int, tpm: int, start: float, end: float) -> float:
    """The share of the key's binding limit its admissions used in [start, end): requests or tokens,
    whichever is closer to its limit."""
    admitted = [(moment, tokens) for moment, tokens, _ in server.stats[server_key].log if start <= moment < end]
    minutes = (end - start) / 60
    return max(len(admitted) / (rpm * minutes), sum(tokens for _, tokens in admitted) / (tpm * minutes))
