from __future__ import annotations

import pyarrow as pa
import pytest

from soulray.dedup.text import DedupInputError, content_hashes, normalise, row_texts
from tests.dedup.conftest import dialogues_table, units_table


def test_normalise_folds_width_case_punctuation_and_whitespace():
    texts = pa.array(["你好，世界！  Ｈｅｌｌｏ\tWorld。", "你好世界 hello world", None, " ，。！ "])
    assert normalise(texts).to_pylist() == ["你好世界 hello world", "你好世界 hello world", "", ""]
    hashes = content_hashes(normalise(texts))
    assert (hashes[0] == hashes[1]).all() and not (hashes[0] == content_hashes(pa.array(["x"]))[0]).all()


def test_row_texts_of_units_and_dialogues():
    units = units_table([{"question": "问题", "description": None, "answer": "回答"}])
    assert row_texts(units).to_pylist() == ["问题\n\n回答"]
    dialogues = dialogues_table([{"id": "d", "messages": [{"role": "user", "content": "你好"},
                                                          {"role": "assistant", "content": "你好呀"}]},
                                 {"id": "e", "messages": []}])
    assert row_texts(dialogues).to_pylist() == ["你好\n你好呀", ""]
    assert row_texts(dialogues.slice(1)).to_pylist() == [""]


def test_unreadable_rows_are_named():
    with pytest.raises(DedupInputError, match="missing answer"):
        row_texts(pa.table({"question": ["q"], "description": ["d"]}))
    messages = pa.array([[{"role": "user", "content": "x"}], None],
                        pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    with pytest.raises(DedupInputError, match="column 'messages', row 1"):
        row_texts(pa.table({"messages": messages}))
