"""The quality gate's settings (config key `quality_gate`). Only pydantic here: soulray/config.py imports
this module, so it must not import the config back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QualityGateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="rate every rewritten dialogue after the dialogue filters")
    rubric: str = Field("gate-v1", description="a builtin rubric version or a rubric file ({source}, {dialogue})")
    # gate-v1 has five 0-2 dimensions (10 in all). 7 asks for a dialogue that is good on most and
    # poor on none: with min_score 1 a 0 anywhere (say, an unsafe turn) fails whatever the total.
    threshold: int = Field(7, ge=0, description="the total score a dialogue needs to pass")
    min_score: int = Field(1, ge=0, description="…and no dimension under this")
    revise: bool = Field(True, description="send a dialogue under the threshold back once, with the critique")
    model: str | None = Field(None, description="the judge's and reviser's model; default the rewrite's first")
    temperature: float = Field(0.0, ge=0, le=2, description="decoding of judge and revision calls")
    max_tokens: int = Field(2048, ge=16, description="cap on a revision's completion (a rating is short)")
    max_reasks: int = Field(1, ge=0, description="re-ask a rating that does not parse this many times")
    judge_run: int = Field(0, ge=0, description="another number re-rates instead of reading the cache "
                                                "(two runs give the judge's agreement with itself)")
    # A guess until a real judge has been measured: the offline server revised 44% of the sample
    # (bench/RESULTS.md), but its ratings are lexical cues, not a model's.
    revision_share: float = Field(0.3, ge=0, le=1, description="dry run: the share of dialogues expected to "
                                                               "need a revision; a run's report says the real one")
