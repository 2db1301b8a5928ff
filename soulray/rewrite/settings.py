"""The rewrite stage's settings: the prompt, the models and their shares, sampling and turn bounds, on
top of the API settings it shares with evaluation (soulray/llm/settings.py)."""

from __future__ import annotations

from pydantic import Field

from soulray.llm.settings import ApiConfig, ModelShare


class RewriteConfig(ApiConfig):
    enabled: bool = True
    dry_run: bool = Field(False, description="estimate tokens and cost of the rewrite; call nothing, publish nothing")
    prompt: str = Field("soulchat-v1", description="a builtin prompt version or a template file")
    models: list[ModelShare] = Field(default_factory=lambda: [ModelShare(name="gpt-3.5-turbo")], min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(2048, ge=16, description="the cap on max_tokens; each call sends a budget learned from "
                                                     "past completions, at most this")
    max_tokens_quantile: float = Field(0.99, gt=0, le=1, description="a call's max_tokens: this quantile of the "
                                                                     "completion lengths learned so far…")
    max_tokens_margin: float = Field(1.25, ge=1, description="…times this margin (a cut completion is re-asked "
                                                              "with twice the budget)")
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
