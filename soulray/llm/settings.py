"""LLM account settings: API keys with their limits, models, prices, and the OpenAI-compatible API
settings (`ApiConfig`) that the rewrite stage extends and that evaluation uses as its `api`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soulray.settings import EnvVarName, StrictModel


class ModelLimits(StrictModel):
    rpm: int = Field(ge=1, description="requests per minute for this model on this key")
    tpm: int = Field(ge=1, description="tokens per minute for this model on this key")
    max_concurrent: int | None = Field(None, ge=1, description="default: the key's max_concurrent")
    batch_queue_tokens: int | None = Field(None, ge=1, description="default: the key's batch_queue_tokens")


class ApiKey(StrictModel):
    """One API key, by name, with its limits. The secret itself is read on each worker from
    `api_key_env` or `api_key_file`; a key with neither sends a placeholder (local servers)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    api_key_env: EnvVarName | None = None
    api_key_file: str | None = None
    base_url: str | None = Field(None, description="this key's endpoint, if not rewrite.base_url")
    models: list[str] | None = Field(None, description="models this key may call (default: all)")
    api_version: str | None = Field(None, description="Azure OpenAI: the api-version; base_url is then the resource "
                                                      "endpoint and model names are deployment names")
    rpm: int = Field(500, ge=1, description="requests per minute")
    tpm: int = Field(200_000, ge=1, description="tokens per minute")
    max_concurrent: int = Field(64, ge=1, description="requests in flight at once")
    model_limits: dict[str, ModelLimits] = Field(
        default_factory=dict, description="per-model limits (OpenAI limits each model separately); models not "
                                          "listed share the key-level rpm/tpm/max_concurrent")
    budget_usd: float | None = Field(None, ge=0)
    batch_queue_tokens: int = Field(2_000_000, ge=1, description="rewrite.mode batch: prompt tokens this key may "
                                    "have enqueued per model (the provider's batch queue limit for its tier)")

    @model_validator(mode="after")
    def _azure_needs_endpoint(self) -> ApiKey:
        if self.api_version and not self.base_url:
            raise ValueError(f"key {self.name}: api_version (Azure) needs base_url, the resource endpoint "
                             "(https://<resource>.openai.azure.com)")
        return self


class ModelShare(StrictModel):
    name: str
    share: float = Field(1.0, gt=0, description="relative share of rows routed to this model")


class Price(StrictModel):
    prompt_per_1k: float = Field(ge=0)
    completion_per_1k: float = Field(ge=0)


# USD per 1,000 tokens, list prices at the time of writing; override in config for your contract.
DEFAULT_PRICES = {
    "gpt-3.5-turbo": Price(prompt_per_1k=0.0005, completion_per_1k=0.0015),
    "gpt-4": Price(prompt_per_1k=0.03, completion_per_1k=0.06),
    "gpt-4o-mini": Price(prompt_per_1k=0.00015, completion_per_1k=0.0006),
    "deepseek-chat": Price(prompt_per_1k=0.00027, completion_per_1k=0.0011),
}


class LocalServerConfig(StrictModel):
    """The embedded offline rewriter used when rewrite.base_url is 'local' (demo, tests)."""

    latency_ms: tuple[float, float] = (0.0, 0.0)
    rpm: int = Field(100_000, ge=1)
    tpm: int = Field(100_000_000, ge=1)
    # how a real provider differs from soulray's own view (soulray/offline/server.py, ServerConfig)
    token_counting: Literal["ours", "characters"] | float = Field(
        "ours", description="'ours', 'characters', or a ratio to ours (e.g. 1.5)")
    charge: Literal["actual", "max_tokens"] = Field("actual", description="max_tokens: OpenAI's admission rule")
    quantum_s: float = Field(60.0, gt=0, le=60, description="enforce the minute's limits in slices this long")


class BatchModeConfig(StrictModel):
    """The provider's Batch API (rewrite.mode: batch, soulray/llm/batch.py); limits are OpenAI's."""

    price_factor: float = Field(0.5, gt=0, description="batch price = online price × this (OpenAI: 50%)")
    prices: dict[str, Price] = Field(default_factory=dict, description="batch prices per model (override the factor)")
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)
    max_bytes_per_file: int = Field(200 * 1024 * 1024, ge=4096, le=200 * 1024 * 1024)
    poll_s: float = Field(30.0, gt=0, description="first poll interval; ×1.5 while nothing changes")
    poll_max_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0, description="resubmissions of a failed or expired request before it is a reject")
    local_time_scale: float = Field(1.0, gt=0, description="base_url local: simulated seconds per real second")
    local_latency_s: float = Field(3600.0, ge=0, description="base_url local: simulated time a batch takes")
    local_queue_tokens: int | None = Field(None, ge=1, description="base_url local: the server's queue limit")


class ApiConfig(StrictModel):
    """An OpenAI-compatible API: endpoint, keys, limits. The rewrite stage's settings extend it
    (RewriteConfig), so endpoint models and the judge call through the same broker, cache and accounting
    with the same names, defaults and checks."""

    base_url: str = Field("local", description="'local' (embedded offline server) or an OpenAI-compatible /v1 URL")
    keys: list[ApiKey] = Field(default_factory=lambda: [ApiKey(name="local", rpm=100_000, tpm=100_000_000,
                                                               max_concurrent=256)], min_length=1)
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    max_retries: int = Field(6, ge=0, description="retries of 408/409/429/5xx/timeouts per call")
    timeout_s: float = Field(120.0, gt=0, description="hard deadline per call")
    budget_usd: float | None = Field(None, ge=0, description="stop issuing calls before spending more")
    actors: int = Field(2, ge=1)
    actor_num_cpus: float = Field(0.25, gt=0, description="I/O-bound: a fraction of a CPU (DESIGN.md)")
    concurrency_per_actor: int = Field(32, ge=1)
    batch_size: int = Field(32, ge=1)
    local_server: LocalServerConfig = LocalServerConfig()


class CallConfig(ApiConfig):
    """What a kind of call sends on top of the API: its models, sampling and max_tokens budget. The
    rewrite stage's settings extend it (RewriteConfig); evaluation builds one per endpoint model and one
    for the judge (soulray/evaluate/llm.py)."""

    models: list[ModelShare] = Field(default_factory=lambda: [ModelShare(name="gpt-3.5-turbo")], min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(2048, ge=16, description="the cap on max_tokens; each call sends a budget learned from "
                                                     "past completions, at most this")
    max_tokens_quantile: float = Field(0.99, gt=0, le=1, description="a call's max_tokens: this quantile of the "
                                                                     "completion lengths learned so far…")
    max_tokens_margin: float = Field(1.25, ge=1, description="…times this margin (a cut completion is re-asked "
                                                              "with twice the budget)")
