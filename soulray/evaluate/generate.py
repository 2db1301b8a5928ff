"""Next-turn generation from a Hugging Face checkpoint, batched, reproducible, in a Ray actor pool.

Decoding is the paper's: temperature 0.95, then top-p 0.75, sampled (SOULCHAT.md). The draw is made by
the Gumbel-max trick with one torch.Generator per sample, seeded from the sample id: argmax(logits + G)
with G ~ Gumbel(0, 1) is a draw from softmax(logits), so `generate` runs greedily over perturbed scores
and each sample's text depends on its own seed only, not on which batch, actor or order it ran in. A
rerun with the same seed gives the same responses (Hugging Face's own sampler draws from one global
generator, so a row's text would change with its batch neighbours).

Prompts are token ids from the fine-tuning code itself (soulray.train.prepare.encoding_of), in the format
and context length the checkpoint was trained with: a model is asked for a turn with exactly the ids
its training sample of that turn held before the target. Rendering a string and tokenizing it whole
would not be the same thing for every tokenizer: training encodes prompt and reply pieces apart, and a
SentencePiece-style tokenizer marks the start of every piece, and a BPE may merge across a boundary.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from soulray.evaluate.samples import sample_seed
from soulray.evaluate.settings import DecodingConfig
from soulray.fs import S3Config
from soulray.schema import EVAL_RESPONSE
from soulray.train.samples import COUNSELOR_PREFIX, USER_PREFIX, Format

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# A model trained on whole dialogues may go on writing the user's next line: the turn ends there.
_TURN_ENDS = ("\n" + USER_PREFIX, "\n" + COUNSELOR_PREFIX)


def gumbel_sampler(generators: list[torch.Generator]):
    """A logits processor adding per-row Gumbel noise: greedy decoding over its output samples."""
    import torch
    from transformers import LogitsProcessor

    class GumbelNoise(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            uniform = torch.stack([torch.rand(scores.shape[-1], generator=generator, dtype=torch.float64)
                                   for generator in generators]).to(scores.device)
            noise = -torch.log(-torch.log(uniform.clamp_(min=1e-300)))
            return scores.float() + noise.float()

    return GumbelNoise()


@dataclass(frozen=True)
class PromptFormat:
    """How a checkpoint is prompted: a fine-tuning format (soulray.train.samples) and how many tokens of
    context it gets, as its fine-tuning gave them."""

    fmt: Format
    max_input_tokens: int
    source: str  # where the format came from: the checkpoint's fine-tuning settings, or its tokenizer


def prompt_format(tokenizer: Any, *, trained: dict[str, Any] | None, decoding: DecodingConfig) -> PromptFormat:
    """The format a checkpoint was fine-tuned with (`trained`: that run's samples settings), never more
    context than it was trained on; a model soulray did not fine-tune gets its own chat template, or the
    paper's rendering when it has none."""
    if trained is not None:
        return PromptFormat(fmt=trained["format"], source="fine-tuning settings",
                            max_input_tokens=min(decoding.max_input_tokens, trained["max_input_tokens"]))
    fmt: Format = "chat_template" if getattr(tokenizer, "chat_template", None) else "soulchat"
    return PromptFormat(fmt=fmt, max_input_tokens=decoding.max_input_tokens, source="tokenizer")


def prompt_ids(tokenizer: Any, histories: list[list[dict[str, str]]], prompt: PromptFormat) -> list[list[int]]:
    """The token ids a model is prompted with for the counselor turn after each history."""
    from soulray.train.prepare import encoding_of

    return encoding_of(tokenizer, prompt.fmt).contexts(histories, max_input=prompt.max_input_tokens)


def generate_batch(model: Any, tokenizer: Any, samples: list[dict[str, Any]], *, decoding: DecodingConfig,
                   model_name: str, prompt: PromptFormat | None = None) -> list[dict[str, Any]]:
    """Responses (EVAL_RESPONSE rows) of `model` for `samples` (EVAL_SAMPLE rows), in their order."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    prompt = prompt or prompt_format(tokenizer, trained=None, decoding=decoding)
    ids = prompt_ids(tokenizer, [sample["history"] for sample in samples], prompt)
    encoded = {name: tensor.to(model.device) for name, tensor in _left_padded(ids, tokenizer.pad_token_id).items()}
    generators = [torch.Generator().manual_seed(sample_seed(sample["sample_id"], decoding.seed)) for sample in samples]
    processors = LogitsProcessorList([TemperatureLogitsWarper(decoding.temperature), TopPLogitsWarper(decoding.top_p),
                                      gumbel_sampler(generators)])
    # a clean config: the checkpoint's own generation defaults (penalties, other sampling) do not apply
    config = GenerationConfig(max_new_tokens=decoding.max_new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=_eos_ids(model, tokenizer))
    with torch.inference_mode():
        output = model.generate(**encoded, generation_config=config, logits_processor=processors)
    prompt_width = encoded["input_ids"].shape[1]
    rows = []
    for index, sample in enumerate(samples):
        new_tokens = output[index, prompt_width:]
        text, finish, generated = _turn(tokenizer, new_tokens, config.eos_token_id, decoding.max_new_tokens)
        rows.append({"sample_id": sample["sample_id"], "model": model_name, "response": text, "finish_reason": finish,
                     "prompt_tokens": int(encoded["attention_mask"][index].sum()), "completion_tokens": generated,
                     "cost_usd": 0.0, "error": None})
    return rows


def _left_padded(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, padded on the left: every prompt ends where generation starts."""
    import torch

    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for line, row in enumerate(ids):
        input_ids[line, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention[line, width - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def _turn(tokenizer: Any, new_tokens: torch.Tensor, eos_ids: list[int], limit: int) -> tuple[str, str, int]:
    """(text of the counselor turn, finish reason, tokens generated) from one row of new tokens."""
    ids = new_tokens.tolist()
    stop = next((position for position, token in enumerate(ids) if token in eos_ids), None)
    generated = stop + 1 if stop is not None else len(ids)
    text = tokenizer.decode(ids[:stop] if stop is not None else ids, skip_special_tokens=True)
    finish = "stop" if stop is not None or generated < limit else "length"
    for end in _TURN_ENDS:
        if end in text:
            text, finish = text.split(end, 1)[0], "stop"
    return text.strip(), finish, generated


def load_checkpoint(checkpoint: str, *, s3: S3Config, device: str, dtype: str) -> tuple[Any, Any]:
    """Model and tokenizer from a Hugging Face folder (an s3:// folder is copied to local disk first)."""
    import torch
    from transformers import AutoModelForCausalLM

    from soulray.train.model import load_tokenizer
    from soulray.train.storage import local_dir

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with local_dir(checkpoint, s3) as folder:
        tokenizer = load_tokenizer(folder)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


class CheckpointGenerator:
    """The callable class `map_batches` runs in an actor pool: loads the model once, generates per batch."""

    def __init__(self, *, model_name: str, checkpoint: str, decoding: DecodingConfig, s3: S3Config, device: str,
                 dtype: str, threads: int, trained: dict[str, Any] | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_name, self.decoding = model_name, decoding
        self.model, self.tokenizer = load_checkpoint(checkpoint, s3=s3, device=device, dtype=dtype)
        self.prompt = prompt_format(self.tokenizer, trained=trained, decoding=decoding)
        log.info("%s: prompts in the %s format, at most %d tokens (from its %s)", model_name, self.prompt.fmt,
                 self.prompt.max_input_tokens, self.prompt.source)

    def __call__(self, batch: pa.Table) -> pa.Table:
        samples = batch.to_pylist()
        rows = generate_batch(self.model, self.tokenizer, samples, decoding=self.decoding, model_name=self.model_name,
                              prompt=self.prompt)
        return pa.Table.from_pylist(rows, schema=EVAL_RESPONSE)


def threads_for(num_cpus: float) -> int:
    return max(1, math.floor(num_cpus))
