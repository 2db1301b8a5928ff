"""Next-turn generation from a Hugging Face checkpoint, batched, reproducible, in a Ray actor pool.

Decoding is the paper's: temperature 0.95, then top-p 0.75, sampled (SOULCHAT.md). The draw is made by
the Gumbel-max trick with one torch.Generator per sample, seeded from the sample id: argmax(logits + G)
with G ~ Gumbel(0, 1) is a draw from softmax(logits), so `generate` runs greedily over perturbed scores
and each sample's text depends on its own seed only, not on which batch, actor or order it ran in. A
rerun with the same seed gives the same responses (Hugging Face's own sampler draws from one global
generator, so a row's text would change with its batch neighbours).
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from soulray.config import DecodingConfig, S3Config
from soulray.evaluate.samples import render_prompt, sample_seed
from soulray.schema import EVAL_RESPONSE
from soulray.train.samples import COUNSELOR_PREFIX, USER_PREFIX

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


def generate_batch(model: Any, tokenizer: Any, samples: list[dict[str, Any]], *, decoding: DecodingConfig,
                   model_name: str) -> list[dict[str, Any]]:
    """Responses (EVAL_RESPONSE rows) of `model` for `samples` (EVAL_SAMPLE rows), in their order."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    templated = bool(getattr(tokenizer, "chat_template", None))
    prompts = [prompt_text(tokenizer, sample["history"]) for sample in samples]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, add_special_tokens=not templated,
                        max_length=decoding.max_input_tokens).to(model.device)
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


def prompt_text(tokenizer: Any, history: list[dict[str, str]]) -> str:
    """The model's own chat template when it has one (a soulray fine-tuned model stores the paper's
    format as its template, so prompts match training exactly); else the paper's rendering, as soulray
    trains it (the initial tiny model of a fine-tuning run gets the very prompt its trained self gets)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    return render_prompt(history, eos=tokenizer.eos_token or "")


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
    tokenizer.padding_side = "left"  # prompts end where generation starts
    tokenizer.truncation_side = "left"  # too long a history loses its oldest turns, never the last question
    return model.to(device).eval(), tokenizer


class CheckpointGenerator:
    """The callable class `map_batches` runs in an actor pool: loads the model once, generates per batch."""

    def __init__(self, *, model_name: str, checkpoint: str, decoding: DecodingConfig, s3: S3Config, device: str,
                 dtype: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_name, self.decoding = model_name, decoding
        self.model, self.tokenizer = load_checkpoint(checkpoint, s3=s3, device=device, dtype=dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        samples = batch.to_pylist()
        rows = generate_batch(self.model, self.tokenizer, samples, decoding=self.decoding, model_name=self.model_name)
        return pa.Table.from_pylist(rows, schema=EVAL_RESPONSE)


def threads_for(num_cpus: float) -> int:
    return max(1, math.floor(num_cpus))
