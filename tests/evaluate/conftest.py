"""Evaluation fixtures: the bundled SMILECHAT sample's real dialogues, and a tiny exported model."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from soulray.train.corpus import smilechat_dialogues

DEMO = Path(__file__).parent.parent.parent / "soulray" / "data" / "demo"


@pytest.fixture(scope="session")
def dialogues() -> pa.Table:
    """The 300 real SMILECHAT dialogues (ChatGPT rewrites of PsyQA answers) as published dialogue rows,
    with their PsyQA question ids: several dialogues share a question, as in the full corpus."""
    return smilechat_dialogues(DEMO)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, dialogues) -> Path:
    """An untrained tiny Llama with a tokenizer trained on the sample, exported the way a soulray
    fine-tuning run exports its model (Hugging Face folder, the paper's format as chat template)."""
    from soulray.train.model import export, tiny_model, train_tokenizer
    from soulray.train.settings import TinyModelConfig

    folder = tmp_path_factory.mktemp("tiny") / "model"
    texts = [message["content"] for messages in dialogues["messages"].to_pylist() for message in messages]
    tokenizer = train_tokenizer(texts, vocab_size=600)
    model = tiny_model(TinyModelConfig(vocab_size=600, hidden_size=32, layers=1, heads=2, intermediate_size=64),
                       vocab_size=len(tokenizer), max_positions=1024, seed=0)
    export(model, tokenizer, folder, soulchat_format=True)
    return folder
