"""The tiny model and corpus-trained tokenizer on real SMILECHAT dialogues."""

from __future__ import annotations

import numpy as np

from soulray.train.model import export, load_model, load_tokenizer, tiny_model
from soulray.train.prepare import _encoder
from soulray.train.samples import IGNORE_INDEX, SampleStore, plan_samples, tokenize_dialogues
from soulray.train.settings import TinyModelConfig


def test_both_modes_supervise_the_same_tokens_on_real_dialogues(smilechat, small_tokenizer):
    tokens = tokenize_dialogues(smilechat, encode_batch=_encoder(small_tokenizer), eos_id=small_tokenizer.eos_token_id)
    limits = {"max_input": 256, "max_output": 96}
    per_turn = plan_samples(tokens, mode="per_turn", **limits)
    whole = plan_samples(tokens, mode="whole_dialog", **limits)

    def supervised(samples):
        store = SampleStore.from_tables(tokens, samples)
        positions = set()
        for index in range(len(store)):
            row, start = int(store.rows[index]), int(store.starts[index])
            labels = store.batch([index], pad_id=0)["labels"][0]
            positions |= {(row, start + int(p)) for p in np.flatnonzero(labels != IGNORE_INDEX)}
        return positions

    assert supervised(per_turn) == supervised(whole)
    assert whole.num_rows < per_turn.num_rows
    assert sum(e - s for s, e in zip(whole["start"].to_pylist(), whole["end"].to_pylist(), strict=True)) < \
        sum(e - s for s, e in zip(per_turn["start"].to_pylist(), per_turn["end"].to_pylist(), strict=True))


def test_exported_chat_template_renders_the_training_prompt(smilechat, small_tokenizer, tmp_path):
    """Generation (the evaluate stage) can rebuild exactly what training saw with apply_chat_template."""
    model = tiny_model(TinyModelConfig(), vocab_size=len(small_tokenizer), max_positions=512, seed=0)
    export(model, small_tokenizer, tmp_path, soulchat_format=True)
    tokenizer = load_tokenizer(tmp_path)
    messages = smilechat.column("messages").to_pylist()[0]
    tokens = tokenize_dialogues(smilechat.slice(0, 1), encode_batch=_encoder(tokenizer), eos_id=tokenizer.eos_token_id)
    row = tokens.to_pylist()[0]
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for turn, start in zip(replies[:3], row["target_starts"][:3], strict=True):
        prompt = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(row["input_ids"][:start]) == prompt
    assert prompt.endswith("\n心理咨询师：") and "</s>\n用户：" in prompt


def test_tiny_model_is_seeded_and_round_trips(small_tokenizer, tmp_path):
    import torch

    first = tiny_model(TinyModelConfig(), vocab_size=len(small_tokenizer), max_positions=256, seed=5)
    second = tiny_model(TinyModelConfig(), vocab_size=len(small_tokenizer), max_positions=256, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    export(first, small_tokenizer, tmp_path, soulchat_format=True)
    loaded = load_model(tmp_path)
    ids = torch.tensor([small_tokenizer("用户：你好\n心理咨询师：")["input_ids"]])
    assert torch.allclose(first(ids).logits, loaded(ids).logits)
