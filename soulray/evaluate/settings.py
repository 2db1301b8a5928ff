"""The evaluation job's settings: decoding, the models compared, checkpoint generation, the LLM judge
and the held-out split. The API that endpoint models and the judge call is soulray/llm/settings.py's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soulray.settings import StrictModel


class DecodingConfig(StrictModel):
    """The paper's decoding (SOULCHAT.md): top-p sampling with p 0.75, temperature 0.95, ≤ 512 new tokens."""

    top_p: float = Field(0.75, gt=0, le=1)
    temperature: float = Field(0.95, gt=0, le=2)
    max_new_tokens: int = Field(512, ge=1)
    max_input_tokens: int = Field(1536, ge=16, description="checkpoints: keep the last this many prompt tokens")
    seed: int = Field(0, description="with the sample id, fixes every sampling draw: reruns give the same text")


class EvalModel(StrictModel):
    """One model to evaluate: a Hugging Face checkpoint folder, or a model behind evaluate.api."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$", description="its label in the report")
    checkpoint: str | None = Field(None, description="a Hugging Face model folder (model + tokenizer), local or s3://")
    endpoint_model: str | None = Field(None, description="a model name served by evaluate.api (OpenAI-compatible)")
    system_prompt: str | None = Field(None, description="endpoint models: a system message before the dialogue")

    @model_validator(mode="after")
    def _one_source(self) -> EvalModel:
        if (self.checkpoint is None) == (self.endpoint_model is None):
            raise ValueError(f"model {self.name}: give exactly one of checkpoint or endpoint_model")
        return self


class CheckpointGenerationConfig(StrictModel):
    """Checkpoints generate in a Ray actor pool, one model copy per actor."""

    actors: int = Field(2, ge=1)
    actor_num_cpus: float = Field(1.0, gt=0, description="also the torch threads of each actor")
    actor_num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="samples generated together (prompts of similar length)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class JudgeConfig(StrictModel):
    """The optional LLM judge: Con./Emp./Hel. 0-2 and Saf. 0-1 per response, as the paper's experts rated."""

    enabled: bool = False
    model: str = Field("gpt-4o-mini", description="a model served by evaluate.api")
    rubric: str = Field("judge-v1", description="a builtin rubric version or a rubric file")
    runs: int = Field(2, ge=1, le=10, description="independent judge runs; two or more give their agreement")
    samples: int | None = Field(100, ge=1, description="responses rated per model (the paper: 100); None: all")
    temperature: float = Field(1.0, ge=0, le=2, description="> 0, so runs are independent raters")
    max_tokens: int = Field(256, ge=16)
    max_reasks: int = Field(2, ge=0, description="re-ask an unparseable rating this many times")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)


class EvalSplitConfig(StrictModel):
    """Which questions are held out. By default, the split.json beside the first checkpoint that has one
    (what its fine-tuning run kept out of training); else the fine-tuning job's rule with these numbers."""

    split_file: str | None = Field(None, description="a fine-tuning run's split.json (local or s3://)")
    validation_share: float = Field(0.05, gt=0, le=1, description="as finetune samples.validation_share")
    seed: int = Field(0, description="as finetune samples.split_seed")
