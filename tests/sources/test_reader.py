from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.errors import SourceError
from soulray.schema import WORKING_UNIT, question_group, record_id
from soulray.sources import normalise_fragment, plan_fragments
from soulray.sources.settings import ColumnMap, SourceSpec
from tests.conftest import DEMO_QA


def read_all(spec: SourceSpec) -> pa.Table:
    plan = plan_fragments(spec)
    return pa.concat_tables([normalise_fragment(fragment, spec) for fragment in plan.fragments])


def write(path: Path, table: pa.Table, **kwargs) -> str:
    pq.write_table(table, path, **kwargs)
    return str(path)


def test_demo_sample_normalises_every_row():
    spec = SourceSpec(path=str(DEMO_QA))
    units = read_all(spec)
    source = pq.read_table(DEMO_QA)
    assert units.schema == WORKING_UNIT
    assert units.num_rows == source.num_rows == 300
    assert units["reject_reason"].null_count == 300
    first = units.slice(0, 1).to_pylist()[0]
    assert first["record_id"] == record_id(source["question"][0].as_py(), "", source["answer"][0].as_py())
    assert first["answer_id"] == source["answer_id"][0].as_py()
    assert units["source_row"].to_pylist() == list(range(300))


def test_row_numbers_continue_across_row_groups(tmp_path):
    table = pa.table({"question": [f"问题{i}" for i in range(10)], "answer": [f"回答{i}" for i in range(10)]})
    spec = SourceSpec(path=write(tmp_path / "qa.parquet", table, row_group_size=3))
    plan = plan_fragments(spec)
    assert [f.first_row for f in plan.fragments] == [0, 3, 6, 9]
    units = read_all(spec)
    assert units["source_row"].to_pylist() == list(range(10))
    # no ids in the file: question_id from the question text, answer_id from file and row
    assert units["answer_id"][4].as_py() == "qa.parquet:4"
    assert units["question_id"][0].as_py() == question_group("问题0")


def test_column_mapping_and_integer_ids(tmp_path):
    table = pa.table({"qid": pa.array([7, 7], pa.int64()), "title": ["失眠怎么办", "失眠怎么办"],
                      "body": ["最近总是睡不着", "最近总是睡不着"], "reply": ["试试放松训练", "规律作息"],
                      "tag": ["情绪", "情绪"]})
    spec = SourceSpec(path=write(tmp_path / "x.parquet", table),
                      columns=ColumnMap(question_id="qid", question="title", description="body", answer="reply",
                                        topic="tag"))
    rows = read_all(spec).to_pylist()
    assert [row["question_id"] for row in rows] == ["7", "7"]
    assert rows[0]["description"] == "最近总是睡不着" and rows[0]["topic"] == "情绪"
    assert rows[0]["record_id"] == record_id("失眠怎么办", "最近总是睡不着", "试试放松训练")


@pytest.mark.parametrize("answers", [
    pa.array([["答一", "答二"], [], ["答三"]], pa.list_(pa.string())),
    pa.array([[{"answer_text": "答一", "has_label": True}, {"answer_text": "答二", "has_label": False}], [],
              [{"answer_text": "答三", "has_label": False}]],
             pa.list_(pa.struct([("answer_text", pa.string()), ("has_label", pa.bool_())]))),
])
def test_wide_layout_explodes_answers(tmp_path, answers):
    table = pa.table({"question_id": ["a", "b", "c"], "question": ["问一", "问二", "问三"], "answers": answers})
    spec = SourceSpec(path=write(tmp_path / "wide.parquet", table), layout="wide", default_topic="成长")
    rows = read_all(spec).to_pylist()
    assert [(r["answer_id"], r["answer"], r["reject_reason"]) for r in rows] == [
        ("a-0", "答一", None), ("a-1", "答二", None), ("b-0", "", "empty_answer"), ("c-0", "答三", None)]
    assert {r["topic"] for r in rows} == {"成长"}
    assert [r["source_row"] for r in rows] == [0, 0, 1, 2]


def test_null_and_blank_text_become_rejects(tmp_path):
    table = pa.table({"question": ["好问题", None, "  ", "又一个"], "answer": ["好回答", "x", "y", None]})
    rows = read_all(SourceSpec(path=write(tmp_path / "q.parquet", table))).to_pylist()
    assert [r["reject_reason"] for r in rows] == [None, "empty_question", "empty_question", "empty_answer"]
    assert all(r["reject_stage"] == "normalize" for r in rows[1:])
    assert "'question'" in rows[1]["reject_detail"]


def test_invalid_utf8_becomes_a_reject(tmp_path):
    table = pa.table({"question": pa.array([b"\xe4\xbd\xa0\xe5\xa5\xbd", b"bad \xff\xfe"], pa.binary()),
                      "answer": pa.array(["好的", "好的"])})
    rows = read_all(SourceSpec(path=write(tmp_path / "b.parquet", table))).to_pylist()
    assert rows[0]["question"] == "你好" and rows[0]["reject_reason"] is None
    assert rows[1]["reject_reason"] == "invalid_utf8" and "question" in rows[1]["reject_detail"]


def test_invalid_utf8_inside_a_string_column(tmp_path):
    bad = pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())  # a writer that did not validate
    table = pa.table({"question": ["问", "问"], "answer": bad})
    rows = read_all(SourceSpec(path=write(tmp_path / "s.parquet", table))).to_pylist()
    assert [r["reject_reason"] for r in rows] == [None, "invalid_utf8"]


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "m.parquet", pa.table({"question": ["问"], "reply": ["答"]}))
    with pytest.raises(SourceError) as error:
        plan_fragments(SourceSpec(path=path))
    assert path in str(error.value) and "'answer'" in str(error.value) and "reply" in str(error.value)


def test_explicit_optional_column_must_exist(tmp_path):
    path = write(tmp_path / "o.parquet", pa.table({"question": ["问"], "answer": ["答"]}))
    plan_fragments(SourceSpec(path=path))  # default optional names may be absent
    with pytest.raises(SourceError, match="missing column 'category'"):
        plan_fragments(SourceSpec(path=path, columns=ColumnMap(topic="category")))


def test_wrong_column_type_names_column(tmp_path):
    path = write(tmp_path / "t.parquet", pa.table({"question": [1, 2], "answer": ["a", "b"]}))
    with pytest.raises(SourceError, match=r"t\.parquet: column 'question' \(question\) has type int64"):
        plan_fragments(SourceSpec(path=path))
    path = write(tmp_path / "w.parquet", pa.table({"question": ["q"], "answers": ["not a list"]}))
    with pytest.raises(SourceError, match="column 'answers'.*expected list"):
        plan_fragments(SourceSpec(path=path, layout="wide"))


def test_corrupt_empty_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match="corrupt.parquet: not a readable Parquet file"):
        plan_fragments(SourceSpec(path=str(corrupt)))
    empty = write(tmp_path / "empty.parquet", pa.table({"question": pa.array([], pa.string()),
                                                        "answer": pa.array([], pa.string())}))
    with pytest.raises(SourceError, match="empty.parquet: the source table is empty"):
        plan_fragments(SourceSpec(path=empty))
    with pytest.raises(SourceError, match="does not exist"):
        plan_fragments(SourceSpec(path=str(tmp_path / "missing.parquet")))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SourceError, match="holds no .parquet files"):
        plan_fragments(SourceSpec(path=str(tmp_path / "nothing")))


def test_folder_of_files_with_lineage(tmp_path):
    folder = tmp_path / "src"
    (folder / "part=1").mkdir(parents=True)
    write(folder / "a.parquet", pa.table({"question": ["问一"], "answer": ["答一"]}))
    write(folder / "part=1" / "b.parquet", pa.table({"question": ["问二", "问三"], "answer": ["答二", "答三"]}))
    (folder / "README.txt").write_text("ignored")
    plan = plan_fragments(SourceSpec(path=str(folder)))
    assert plan.rows == 3
    assert [Path(item["uri"]).name for item in plan.inputs] == ["a.parquet", "b.parquet"]
    assert all(len(item["fingerprint"]) == 64 for item in plan.inputs)
    # the fingerprint changes when the data does
    before = plan.inputs[0]["fingerprint"]
    write(folder / "a.parquet", pa.table({"question": ["问一"], "answer": ["答一!"]}))
    assert plan_fragments(SourceSpec(path=str(folder))).inputs[0]["fingerprint"] != before


def test_source_on_s3_reads_through_the_endpoint(s3_config, s3_bucket):
    location = f"{s3_bucket}/sources/qa.parquet"
    from soulray.fs import resolve

    target = resolve(location, s3_config)
    pq.write_table(pq.read_table(DEMO_QA), target.path, filesystem=target.filesystem)
    spec = SourceSpec(path=f"{s3_bucket}/sources/")
    plan = plan_fragments(spec, s3=s3_config)
    assert plan.rows == 300 and plan.inputs[0]["uri"] == location
    units = pa.concat_tables([normalise_fragment(f, spec, s3=s3_config) for f in plan.fragments])
    assert units.num_rows == 300 and set(units["source_file"].to_pylist()) == {location}
    with pytest.raises(SourceError, match="does not exist"):
        plan_fragments(SourceSpec(path=f"{s3_bucket}/nothing-here.parquet"), s3=s3_config)
