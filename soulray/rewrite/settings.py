"""The rewrite stage's settings: the prompt, the models and their shares, sampling and turn bounds, on
top of the API settings it shares with evaluation (soulray/llm/settings.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soulray.llm.settings import BatchModeConfig, CallConfig
from soulray.rewrite.persona import PersonaSettings


class RewriteConfig(CallConfig):
    enabled: bool = True
    mode: Literal["online", "batch"] = Field("online", description="batch: the provider's Batch API (half price, "
                                             "results within 24 h, resumable)")
    batch: BatchModeConfig = BatchModeConfig()
    dry_run: bool = Field(False, description="estimate tokens and cost of the rewrite; call nothing, publish nothing")
    prompt: str = Field("soulchat-v1", description="a builtin prompt version or a template file")
    min_turns: int = Field(8, ge=2, description="utterances, user and counselor together")
    max_turns: int = Field(20, ge=2)
    max_reasks: int = Field(2, ge=0, description="re-ask a malformed completion (new seed) this many times")
    # 5%: with max_retries 6 a call only fails after ~30 s of backoff against an endpoint that keeps
    # failing, so a healthy run has ~0 such rows; 5% lets a large run ride out a short blip (its rows are
    # rejects a rerun fills from the cache) while an outage, which fails tens of percent or all, publishes
    # nothing and leaves `latest` where it was.
    max_failure_share: float = Field(0.05, ge=0, le=1, description="refuse to publish when more than this share of "
                                     "the rows sent to the rewrite failed for infrastructure reasons (retries "
                                     "exhausted on 5xx/timeouts/429s, no usable key, 401/403/404), not content")
    persona: PersonaSettings = PersonaSettings()  # client profiles: soulray/rewrite/persona.py
