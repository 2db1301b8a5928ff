"""The fine-tuning job's settings: the model (the embedded tiny one or a checkpoint, optionally LoRA),
how dialogues become samples, the optimizer and schedule, and the Ray Train workers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soulray.settings import StrictModel


class TinyModelConfig(StrictModel):
    """The embedded default model: a small Llama-architecture causal LM built from this config, with a
    byte-level BPE tokenizer trained on the training split itself, so the stage runs offline."""

    vocab_size: int = Field(2048, ge=300, description="tokenizer vocabulary (256 bytes + merges + specials)")
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(172, ge=8)
    tokenizer_dialogues: int = Field(2000, ge=1, description="train the tokenizer on at most this many dialogues")


class LoraSettings(StrictModel):
    """LoRA as MeChat used it (SOULCHAT.md): r 16, alpha 64, dropout 0.1."""

    r: int = Field(16, ge=1)
    alpha: float = Field(64.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="None: peft's default for the architecture")


class FinetuneModelConfig(StrictModel):
    path: str | None = Field(None, description="a Hugging Face causal LM folder, local or s3://; None: the tiny model")
    trust_remote_code: bool = Field(False, description="allow the model folder's own code (e.g. ChatGLM)")
    tiny: TinyModelConfig = TinyModelConfig()
    lora: LoraSettings | None = Field(None, description="set to train LoRA adapters instead of every weight")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast on GPUs; CPUs train in fp32")


class FinetuneSamplesConfig(StrictModel):
    mode: Literal["per_turn", "whole_dialog"] = Field(
        "per_turn", description="per_turn: a sample per counselor turn (the paper); whole_dialog: one per dialogue")
    format: Literal["soulchat", "chat_template"] = Field(
        "soulchat", description="soulchat: 用户：…\\n心理咨询师：…; chat_template: the model's own template")
    max_input_tokens: int = Field(1536, ge=1, description="prompt budget per target (SoulChat: 1,536)")
    max_output_tokens: int = Field(512, ge=1, description="target budget (SoulChat: 512)")
    validation_share: float = Field(0.05, gt=0, lt=1, description="share of question_ids held out")
    split_seed: int = 0
    limit: int | None = Field(None, ge=1, description="use at most this many dialogues (smoke runs)")


class OptimConfig(StrictModel):
    """AdamW with DeepSpeed's WarmupDecayLR; SoulChat's numbers by default."""

    steps: int = Field(30_000, ge=1)
    warmup_steps: int = Field(1_000, ge=0)
    max_lr: float = Field(5e-5, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_type: Literal["log", "linear"] = Field("log", description="DeepSpeed's default is log")
    global_batch_size: int = Field(80, ge=1, description="samples per optimizer step, whatever the worker count")
    micro_batch_size: int = Field(4, ge=1, description="samples per forward pass on one worker")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0


class FinetuneTrainerConfig(StrictModel):
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="also each worker's torch threads (rounded up)")
    log_every: int = Field(10, ge=1, description="report loss, lr, tokens/s every this many steps")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validation_batches: int = Field(8, ge=0, description="validation loss at each checkpoint over this many batches")
    max_failures: int = Field(0, ge=-1, description="worker failures Ray Train recovers from (-1: unlimited)")
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage of the DeepSpeed config written for GPU clusters")
