import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from soulray.errors import SourceError
from soulray.sources import normalise_fragment, plan_fragments
from soulray.sources.importers import import_corpus
from soulray.sources.settings import SourceSpec

DEMO_DIALOGS = Path(__file__).parent.parent.parent / "soulray" / "data" / "demo" / "dialogs.parquet"

PSYQA = [
    {"question": "总是失眠怎么办？", "description": "最近压力很大，晚上睡不着。", "keywords": "情绪,睡眠",
     "answers": [
         {"answer_text": "抱抱你，失眠真的很难受。", "has_label": True,
          "labels_sequence": [{"start": 0, "end": 3, "type": "Approval and Reassurance"}]},
         {"answer_text": "可以试试睡前放松。", "has_label": False, "labels_sequence": None}],
     "questionID": 101},
    {"question": "和父母沟通困难", "description": "", "keywords": "家庭",
     "answers": [{"answer_text": "先听听他们的想法。", "has_label": False, "labels_sequence": None}],
     "questionID": 102},
]


def real_dialogues(limit: int = 20) -> list[dict]:
    return pq.read_table(DEMO_DIALOGS).slice(0, limit).to_pylist()


def test_psyqa_round_trip_and_readable_as_source(tmp_path):
    source = tmp_path / "psyqa.json"
    source.write_text(json.dumps(PSYQA, ensure_ascii=False), encoding="utf-8")
    table = import_corpus("psyqa", source, tmp_path / "psyqa.parquet")
    rows = table.to_pylist()
    assert [(r["question_id"], r["answer_id"], r["answer"]) for r in rows] == [
        ("101", "101-0", "抱抱你，失眠真的很难受。"), ("101", "101-1", "可以试试睡前放松。"),
        ("102", "102-0", "先听听他们的想法。")]
    assert rows[0]["keywords"] == ["情绪", "睡眠"] and rows[0]["topic"] == "情绪"
    assert rows[0]["description"] == "最近压力很大，晚上睡不着。"
    spec = SourceSpec(path=str(tmp_path / "psyqa.parquet"))
    units = [normalise_fragment(f, spec) for f in plan_fragments(spec).fragments]
    assert sum(u.num_rows for u in units) == 3


def test_smilechat_files_round_trip(tmp_path):
    folder = tmp_path / "smile"
    folder.mkdir()
    dialogues = real_dialogues()
    back = {"user": "client", "assistant": "counselor"}
    for dialogue in dialogues:
        turns = [{"role": back[m["role"]], "content": m["content"]} for m in dialogue["messages"]]
        (folder / f"{dialogue['id']}.json").write_text(json.dumps(turns, ensure_ascii=False), encoding="utf-8")
    table = import_corpus("smilechat", folder, tmp_path / "smile.parquet")
    imported = {row["id"]: row["messages"] for row in table.to_pylist()}
    assert imported == {d["id"]: d["messages"] for d in dialogues}
    qa = import_corpus("smilechat", folder, tmp_path / "smile-qa.parquet", qa=True).to_pylist()
    first = next(d for d in dialogues if d["id"] == qa[0]["answer_id"])
    assert (qa[0]["question"], qa[0]["answer"]) == (first["messages"][0]["content"], first["messages"][1]["content"])
    # the rewrites of one PsyQA question share its question_id, as the sample's own ids group them
    truth = {row["answer_id"]: row["question_id"] for row in pq.read_table(DEMO_DIALOGS.parent / "qa.parquet").to_pylist()}
    pairs = {(row["question_id"], truth[row["answer_id"]]) for row in qa}
    assert len(pairs) == len({ours for ours, _ in pairs}) == len({theirs for _, theirs in pairs}) < len(qa)


def test_soulchatcorpus_round_trip(tmp_path):
    items = [{"id": index, "topic": "成长", "messages": d["messages"]} for index, d in enumerate(real_dialogues(5))]
    source = tmp_path / "soulchat.json"
    source.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    table = import_corpus("soulchatcorpus", source, tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == table.to_pylist()
    assert [(r["id"], r["topic"], r["messages"]) for r in table.to_pylist()] == \
        [(str(i["id"]), "成长", i["messages"]) for i in items]


@pytest.mark.parametrize("content, fmt, message", [
    (b"[{\"question\": ", "psyqa", r"invalid JSON at line 1"),
    (b"{\"a\": 1}", "psyqa", "must be a JSON list"),
    (json.dumps([{"question": "q", "answers": []}]).encode(), "psyqa", r"item 0: missing key 'questionID'"),
    (json.dumps([{"questionID": 1, "question": 5, "answers": [{"answer_text": "a"}]}]).encode(), "psyqa",
     r"item 0\.question: expected text"),
    (b"[{\"id\": 1}]", "soulchatcorpus", r"item 0: missing key 'messages'"),
    (json.dumps([{"id": 1, "messages": [{"role": "robot", "content": "x"}]}]).encode(), "soulchatcorpus",
     r"messages\[0\]: unknown role 'robot'"),
    (b"\xff\xfe[]", "soulchatcorpus", r"not UTF-8 text \(bad byte at offset 0\)"),
])
def test_bad_json_names_file_and_item(tmp_path, content, fmt, message):
    source = tmp_path / "bad.json"
    source.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        import_corpus(fmt, source, tmp_path / "out.parquet")
    assert str(source) in str(error.value)


def test_import_missing_path_and_empty(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        import_corpus("psyqa", tmp_path / "nope.json", tmp_path / "o.parquet")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(SourceError, match="no rows to import"):
        import_corpus("psyqa", tmp_path / "empty.json", tmp_path / "o.parquet")
