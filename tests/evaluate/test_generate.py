"""Generation from a checkpoint: the paper's prompt, and sampling that depends on the sample alone."""

from __future__ import annotations

from soulray.config import DecodingConfig, S3Config
from soulray.evaluate.generate import _turn, generate_batch, load_checkpoint, prompt_text
from soulray.evaluate.samples import next_turn_samples, render_prompt


def test_fine_tuned_chat_template_is_the_papers_rendering(tiny_checkpoint, dialogues):
    _, tokenizer = load_checkpoint(str(tiny_checkpoint), s3=S3Config(), device="cpu", dtype="auto")
    samples = next_turn_samples(dialogues, held_out=lambda q, r: True, limit=20, seed=0).to_pylist()
    for sample in samples:
        assert prompt_text(tokenizer, sample["history"]) == render_prompt(sample["history"], eos="</s>")
    tokenizer.chat_template = None  # an initial model (no template yet) gets the very same prompt
    assert all(prompt_text(tokenizer, s["history"]) == render_prompt(s["history"], eos="</s>") for s in samples)


def test_each_sample_draws_from_its_own_seed(tiny_checkpoint, dialogues):
    model, tokenizer = load_checkpoint(str(tiny_checkpoint), s3=S3Config(), device="cpu", dtype="auto")
    samples = next_turn_samples(dialogues, held_out=lambda q, r: True, limit=6, seed=0).to_pylist()
    decoding = DecodingConfig(max_new_tokens=12, max_input_tokens=160)

    def texts(batch, seed=0):
        rows = generate_batch(model, tokenizer, batch, decoding=decoding.model_copy(update={"seed": seed}),
                              model_name="tiny")
        return {row["sample_id"]: row["response"] for row in rows}

    together = texts(samples)
    assert texts(samples) == together  # rerun
    assert texts(samples[::-1]) == together  # other order, other padding
    assert {**texts(samples[:2]), **texts(samples[2:5]), **texts(samples[5:])} == together  # other batches
    assert texts(samples, seed=1) != together
    rows = generate_batch(model, tokenizer, samples, decoding=decoding, model_name="tiny")
    assert all(row["completion_tokens"] <= 12 and row["prompt_tokens"] > 0 for row in rows)
    assert all(row["finish_reason"] in ("stop", "length") and row["error"] is None for row in rows)


def test_a_turn_ends_at_eos_or_where_the_next_speaker_begins(tiny_checkpoint):
    _, tokenizer = load_checkpoint(str(tiny_checkpoint), s3=S3Config(), device="cpu", dtype="auto")
    eos = tokenizer.eos_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]

    import torch

    assert _turn(tokenizer, torch.cat([ids("我理解你。"), torch.tensor([eos]), ids("多余")]), [eos], 50)[:2] == \
        ("我理解你。", "stop")
    assert _turn(tokenizer, ids("我理解你。\n用户：谢谢"), [eos], 50)[:2] == ("我理解你。", "stop")
    text, finish, generated = _turn(tokenizer, ids("我理解你，慢慢来"), [eos], len(ids("我理解你，慢慢来")))
    assert (text, finish) == ("我理解你，慢慢来", "length") and generated == len(ids("我理解你，慢慢来"))
