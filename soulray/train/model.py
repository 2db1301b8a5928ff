"""Models and tokenizers: the embedded tiny model (offline, CPU), any Hugging Face causal LM from a
folder, LoRA through peft, and export in Hugging Face format.

Hugging Face loads models by hub id from the internet, which these machines cannot reach (DESIGN.md):
models come from a folder (local, or s3:// copied to the worker first) and the default is built from a
config, with a tokenizer trained on the corpus by the `tokenizers` library.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from soulray.train.samples import COUNSELOR_PREFIX, USER_PREFIX
from soulray.train.settings import LoraSettings, TinyModelConfig

PAD, EOS = "<pad>", "</s>"

# The soulchat training format as a chat template, stored with the exported tokenizer so generation
# (the evaluate stage, any Hugging Face tool) renders prompts exactly as training did:
# apply_chat_template(history, add_generation_prompt=True) → `用户：…\n心理咨询师：…</s>\n用户：…\n心理咨询师：`.
SOULCHAT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif -%}"
    "{%- if message['role'] == 'user' %}{{ '" + USER_PREFIX + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '" + COUNSELOR_PREFIX + "' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ ('\\n' if messages else '') + '" + COUNSELOR_PREFIX + "' }}{% endif -%}"
)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts` (any text encodes; nothing maps to unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD,
                                   chat_template=SOULCHAT_CHAT_TEMPLATE)


def tiny_model(config: TinyModelConfig, *, vocab_size: int, max_positions: int, seed: int) -> Any:
    """A small Llama-architecture causal LM with freshly initialised weights (same seed, same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        bos_token_id=None))


def load_tokenizer(folder: str | Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: str | Path, *, trust_remote_code: bool = False) -> Any:
    """Weights in float32 (the optimizer's master copy); bf16 comes from autocast on GPUs."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                                dtype=torch.float32)


def add_lora(model: Any, settings: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                            target_modules=settings.target_modules, task_type="CAUSAL_LM"))


def trainable_state(model: Any) -> dict[str, Any]:
    """What a checkpoint must hold to restore the weights: every weight, or only LoRA's adapters."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        unexpected = getattr(set_peft_model_state_dict(model, state), "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"the checkpoint holds adapter weights this model lacks: {unexpected[:5]}")
        return
    model.load_state_dict(state)


def export(model: Any, tokenizer: Any, folder: Path, *, soulchat_format: bool) -> None:
    """Hugging Face format: a LoRA model is saved as its adapter (folder/adapter) and merged into a full
    model (folder), so the result loads with AutoModelForCausalLM alone."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(folder / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(folder))
    if soulchat_format:
        tokenizer.chat_template = SOULCHAT_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
