"""Real dialogues (the SMILECHAT sample, CC0) and a tokenizer trained on a few of them."""

from __future__ import annotations

import pytest

from soulray.train.corpus import smilechat_dialogues
from tests.conftest import SMILECHAT_SAMPLE


@pytest.fixture(scope="session")
def smilechat():
    return smilechat_dialogues(SMILECHAT_SAMPLE, limit=240)


@pytest.fixture(scope="session")
def small_tokenizer(smilechat):
    from soulray.train.model import train_tokenizer

    texts = [m["content"] for messages in smilechat.column("messages").to_pylist()[:60] for m in messages]
    return train_tokenizer(texts, vocab_size=512)
