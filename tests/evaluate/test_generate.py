"""Generation from a checkpoint: the training's own prompt, and sampling that depends on the sample alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from soulray.config import FinetuneConfig, load_config
from soulray.evaluate.generate import _turn, generate_batch, load_checkpoint, prompt_format, prompt_ids
from soulray.evaluate.samples import next_turn_samples
from soulray.evaluate.settings import DecodingConfig
from soulray.fs import S3Config
from soulray.train.loop import read_arrow
from soulray.train.model import load_tokenizer
from soulray.train.prepare import INIT_MODEL, prepare

QWEN_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def word_start_tokenizer(dialogues, folder: Path):
    """A SentencePiece-style tokenizer (Metaspace: every encoded piece starts with a word-start mark),
    as Llama's and ChatGLM's are: rendering a prompt as text and tokenizing it whole gives other ids
    than training's piece-by-piece encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    texts = [m["content"] for messages in dialogues["messages"].to_pylist()[:100] for m in messages]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"],
                                                             show_progress=False))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>")
    wrapped.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize(("tokenizer_kind", "fmt"), [("tiny", "soulchat"), ("tiny", "chat_template"),
                                                      ("word_start", "soulchat"), ("word_start", "chat_template")])
def test_evaluation_prompt_is_the_training_samples_context(tmp_path, dialogues, tokenizer_kind, fmt):
    """For real SMILECHAT dialogues, the ids generation feeds a model for a counselor turn are exactly
    the ids the fine-tuning job's per_turn sample of that turn holds before its target."""
    overrides = [f"samples.format={fmt}", "samples.max_input_tokens=96", "samples.max_output_tokens=32",
                 "samples.validation_share=0.2", "samples.limit=60", "model.tiny.vocab_size=600",
                 "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "model.tiny.heads=2"]
    if tokenizer_kind == "word_start":
        folder = word_start_tokenizer(dialogues, tmp_path / "base")
        if fmt == "chat_template":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            tokenizer.chat_template = QWEN_LIKE
            tokenizer.save_pretrained(str(folder))
        overrides.append(f"model.path={folder}")
    config = load_config(FinetuneConfig, None, overrides)
    prepared = tmp_path / "prepared"
    facts = prepare(config, dialogues=dialogues, prepared_uri=str(prepared), source={"version_uri": "test"}).facts
    tokens, samples = read_arrow(prepared / "train-tokens.arrow"), read_arrow(prepared / "train-samples.arrow")
    tokenizer = load_tokenizer(facts["model_uri"])  # as load_checkpoint loads it
    prompt = prompt_format(tokenizer, trained=facts["samples"], decoding=DecodingConfig())
    assert (prompt.fmt, prompt.max_input_tokens) == (fmt, 96)

    messages = dict(zip(dialogues["id"].to_pylist(), dialogues["messages"].to_pylist(), strict=True))
    rows = tokens.to_pylist()
    histories, wanted = [], []
    for sample in samples.to_pylist()[:120]:
        row = rows[sample["row"]]
        dialogue = messages[row["dialogue_id"]]
        replies = [i for i, m in enumerate(dialogue) if i and m["role"] == "assistant" and m["content"].strip()
                   and any(earlier["role"] == "user" for earlier in dialogue[:i])]
        target = sample["supervised_starts"][0]
        histories.append(dialogue[: replies[row["target_starts"].index(target)]])
        wanted.append(row["input_ids"][sample["start"]:target])
    assert any(len(ids) == 96 for ids in wanted)  # some contexts were cut to max_input_tokens
    assert prompt_ids(tokenizer, histories, prompt) == wanted
    if tokenizer_kind == "word_start" and fmt == "soulchat":
        # the pitfall this guards against is real: the same prompt rendered as text and tokenized whole
        texts = ["\n".join([*(("用户：" + m["content"]) if m["role"] == "user" else ("心理咨询师：" + m["content"] + "</s>")
                               for m in history), "心理咨询师："]) for history in histories]
        whole = [tokenizer(text, add_special_tokens=False)["input_ids"][-96:] for text in texts]
        assert any(a != b for a, b in zip(whole, wanted, strict=True))  # a reply after 心理咨询师： loses its ▁

    if tokenizer_kind == "tiny":  # and those ids are what the model is given, padding aside
        model, tokenizer = load_checkpoint(str(prepared / INIT_MODEL), s3=S3Config(), device="cpu", dtype="auto")
        fed, generate = [], model.generate
        model.generate = lambda **kwargs: fed.append(kwargs) or generate(**kwargs)
        batch = [{"sample_id": f"s{i}", "history": history} for i, history in enumerate(histories[:8])]
        rows = generate_batch(model, tokenizer, batch, decoding=DecodingConfig(max_new_tokens=2), model_name="m",
                              prompt=prompt)
        ids, mask = fed[0]["input_ids"], fed[0]["attention_mask"]
        assert [ids[i][mask[i] == 1].tolist() for i in range(len(batch))] == wanted[:8]
        assert [row["prompt_tokens"] for row in rows] == [len(ids) for ids in wanted[:8]]


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
