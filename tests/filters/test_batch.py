"""The segment view: every row's text in one column, in order, and written back unchanged or rewritten."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from soulray.filters.batch import ASSISTANT, OTHER, USER, batch_from_table, code_points, write_back
from tests.filters.tables import dialogues, turns, units


def test_units_are_three_segments_per_row_in_row_order():
    table = units({"question": "问一", "description": "说明", "answer": "答一"}, {"question": "问二", "answer": "答二"})
    batch = batch_from_table(table, "unit")
    assert batch.text.to_pylist() == ["问一", "说明", "答一", "问二", "", "答二"]
    assert batch.role.tolist() == [USER, USER, ASSISTANT] * 2
    assert batch.row.tolist() == [0, 0, 0, 1, 1, 1]
    rewritten = write_back(table, batch.with_text(pc.utf8_upper(batch.text)))
    assert rewritten["question"].to_pylist() == ["问一", "问二"]  # upper() leaves Chinese alone
    assert rewritten.equals(table)


def test_dialogues_with_nulls_and_unknown_roles_round_trip():
    messages = [turns("你好", "你好呀"), None, [{"role": "client", "content": None}], []]
    table = dialogues(*messages)
    batch = batch_from_table(table, "dialogue")
    assert batch.offsets.tolist() == [0, 2, 2, 3, 3]
    assert batch.text.to_pylist() == ["你好", "你好呀", ""]
    assert batch.role.tolist() == [USER, ASSISTANT, OTHER]
    assert batch.turn.tolist() == [0, 1, 0]
    back = write_back(table, batch.with_text(pa.array(["A", "B", "C"])))
    assert back["messages"].to_pylist() == [turns("A", "B"), None, [{"role": "client", "content": "C"}], []]
    assert back.schema == table.schema


def test_a_sliced_table_reads_only_its_rows():
    # Ray hands filters zero-copy slices of bigger blocks: offsets into shared buffers must be respected
    table = dialogues(turns("一", "二"), turns("三", "四", "五", "六"), turns("七", "八")).slice(1, 1)
    batch = batch_from_table(table, "dialogue")
    assert batch.text.to_pylist() == ["三", "四", "五", "六"]
    assert code_points(batch.text).tolist() == [ord(ch) for ch in "三四五六"]
    assert write_back(table, batch)["messages"].to_pylist() == [turns("三", "四", "五", "六")]


def test_active_rows_are_those_without_a_reject_mark():
    table = units({}, {"reject_stage": "normalize", "reject_reason": "empty_answer"}, {})
    assert batch_from_table(table, "unit").active.tolist() == [True, False, True]
