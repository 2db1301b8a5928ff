"""Prepare a run: split a version's dialogues by question, get a tokenizer (and the tiny model), tokenize
and plan samples, and write it all to <run>/prepared with `prepared.json` last, so a half-written
folder is never taken for a whole one and a resumed run trains on exactly the same samples."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from soulray.config import FinetuneConfig
from soulray.errors import SoulrayError
from soulray.train.loop import write_arrow
from soulray.train.model import load_tokenizer, tiny_model, train_tokenizer
from soulray.train.samples import Encoding, Format, plan_samples
from soulray.train.schedule import WarmupDecay, deepspeed_config
from soulray.train.split import split_by_question, split_manifest
from soulray.train.storage import local_dir, upload_dir, write_json

log = logging.getLogger(__name__)
PREPARED = "prepared.json"
INIT_MODEL = "init-model"
COLUMNS = ["id", "record_id", "question_id", "messages"]


@dataclass(frozen=True)
class Prepared:
    """What prepared.json says: where training starts from and what the samples are."""

    facts: dict[str, Any]

    @property
    def model_uri(self) -> str:
        return self.facts["model_uri"]


def schedule_of(config: FinetuneConfig) -> WarmupDecay:
    optim = config.optim
    return WarmupDecay(total_steps=optim.steps, warmup_steps=optim.warmup_steps, max_lr=optim.max_lr,
                       min_lr=optim.min_lr, warmup_type=optim.warmup_type)


def dialogues_of(table: pa.Table, *, where: str) -> pa.Table:
    missing = [column for column in ["id", "question_id", "messages"] if column not in table.column_names]
    if missing:
        raise SoulrayError(f"{where}: no {', '.join(missing)} column; fine-tuning needs dialogues (schema.DIALOGUE), "
                           "was this version published with rewrite.enabled=false?")
    return table.select([column for column in COLUMNS if column in table.column_names])


def prepare(config: FinetuneConfig, *, dialogues: pa.Table, prepared_uri: str, source: dict[str, Any]) -> Prepared:
    samples_config = config.samples
    if samples_config.limit is not None:
        dialogues = dialogues.slice(0, samples_config.limit)
    train, validation = split_by_question(dialogues, validation_share=samples_config.validation_share,
                                          seed=samples_config.split_seed)
    if train.num_rows == 0:
        raise SoulrayError(f"{source['version_uri']}: no training dialogues ({dialogues.num_rows} in the version)")
    facts: dict[str, Any] = {"source": source, "samples": samples_config.model_dump(mode="json"),
                             "model": config.model.model_dump(mode="json"), "optim": config.optim.model_dump(mode="json")}
    with tempfile.TemporaryDirectory(prefix="soulray-prepare-") as scratch:
        folder = Path(scratch)
        encoding = encoding_of(_tokenizer(config, train, folder), samples_config.format)
        for name, table in (("train", train), ("validation", validation)):
            tokens = encoding.tokenize(table)
            samples = plan_samples(tokens, mode=samples_config.mode, max_input=samples_config.max_input_tokens,
                                   max_output=samples_config.max_output_tokens)
            write_arrow(tokens, folder / f"{name}-tokens.arrow")
            write_arrow(samples, folder / f"{name}-samples.arrow")
            facts[name] = sample_facts(tokens, samples)
        split = split_manifest(train=train, validation=validation, seed=samples_config.split_seed,
                               validation_share=samples_config.validation_share, source=source)
        (folder / "split.json").write_text(json.dumps(split, ensure_ascii=False, indent=1))
        (folder / "deepspeed.json").write_text(json.dumps(deepspeed_config(
            schedule=schedule_of(config), global_batch_size=config.optim.global_batch_size,
            micro_batch_size=config.optim.micro_batch_size, workers=config.trainer.workers,
            zero_stage=config.trainer.zero_stage, bf16=config.model.precision == "bf16",
            grad_clip=config.optim.grad_clip, weight_decay=config.optim.weight_decay, betas=config.optim.betas),
            indent=2))
        facts["model_uri"] = config.model.path or f"{prepared_uri}/{INIT_MODEL}"
        facts["split"] = split["counts"]
        upload_dir(folder, prepared_uri, config.s3)
    # written last: its presence means the folder is whole
    write_json(f"{prepared_uri}/{PREPARED}", facts, config.s3)
    log.info("prepared %s: %s train samples, %s validation samples", prepared_uri, facts["train"]["samples"],
             facts["validation"]["samples"])
    return Prepared(facts)


def sample_facts(tokens: pa.Table, samples: pa.Table) -> dict[str, int]:
    """Counts behind the per_turn / whole_dialog comparison: tokens the model processes per supervised token."""
    supervised = pc.subtract(pc.list_flatten(samples.column("supervised_ends")),
                             pc.list_flatten(samples.column("supervised_starts")))
    processed = pc.subtract(samples.column("end"), samples.column("start"))
    return {"dialogues": tokens.num_rows, "samples": samples.num_rows,
            "dialogue_tokens": int(pc.sum(pc.list_value_length(tokens.column("input_ids"))).as_py() or 0),
            "targets": int(pc.sum(pc.list_value_length(tokens.column("target_starts"))).as_py() or 0),
            "processed_tokens": int(pc.sum(processed).as_py() or 0),
            "supervised_tokens": int(pc.sum(supervised).as_py() or 0)}


def _tokenizer(config: FinetuneConfig, train: pa.Table, folder: Path) -> Any:
    """The model's own tokenizer; for the tiny model, one trained on the training split (never on the
    held-out dialogues) and saved with the freshly initialised model as <prepared>/init-model."""
    if config.model.path is not None:
        with local_dir(config.model.path, config.s3) as model_folder:
            return load_tokenizer(model_folder, trust_remote_code=config.model.trust_remote_code)
    tiny = config.model.tiny
    texts = (message["content"] for messages in train.column("messages").to_pylist()[: tiny.tokenizer_dialogues]
             for message in messages or [])
    tokenizer = train_tokenizer(texts, vocab_size=tiny.vocab_size)
    max_positions = config.samples.max_input_tokens + config.samples.max_output_tokens
    model = tiny_model(tiny, vocab_size=len(tokenizer), max_positions=max_positions, seed=config.optim.seed)
    model.save_pretrained(str(folder / INIT_MODEL))
    tokenizer.save_pretrained(str(folder / INIT_MODEL))
    return tokenizer


def encoding_of(tokenizer: Any, fmt: Format) -> Encoding:
    """The fine-tuning encoding of a Hugging Face tokenizer in format `fmt`: soulchat appends the eos id
    to every reply; chat_template renders with the tokenizer's own template, whose end-of-turn marker
    is part of the reply. Training and evaluation prompts both come from here."""
    if fmt == "soulchat":
        return Encoding(fmt="soulchat", encode_batch=_encoder(tokenizer), eos_id=tokenizer.eos_token_id)
    if not tokenizer.chat_template:
        raise SoulrayError("samples.format=chat_template: the model's tokenizer has no chat template")

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    return Encoding(fmt="chat_template", encode_batch=_encoder(tokenizer), eos_id=None, render=render)


def _encoder(tokenizer: Any):
    def encode_batch(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    return encode_batch
