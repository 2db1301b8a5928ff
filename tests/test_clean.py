"""The clean job: an existing corpus (Parquet or importer JSON) → dialogue filters → a published version."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from soulray.clean import detect_format, raw_dialogues, run, working_dialogues
from soulray.cli import main
from soulray.config import CleanConfig, load_config
from soulray.errors import SourceError
from soulray.evaluate.samples import hash_split, next_turn_samples
from soulray.schema import SCORES, dialogue_record_id, question_group
from soulray.store import open_version
from soulray.store.export import export_jsonl
from soulray.train.split import split_by_question
from tests.accounting import assert_accounted
from tests.conftest import SMILECHAT_SAMPLE
from tests.consumers import assert_readable_by_consumers
from tests.filters.tables import good_dialogue

DEMO_DIALOGS = "soulray/data/demo/dialogs.parquet"


def test_cleans_the_smilechat_demo_dialogues(ray_local, tmp_path):
    config = load_config(CleanConfig, None, [f"input.path={DEMO_DIALOGS}", f"storage.root={tmp_path}",
                                             "storage.rows_per_shard=100"])
    result = run(config)
    counts = result.manifest.counts
    assert counts.input_rows == 300 == counts.output_rows + counts.rejected_rows
    assert list(counts.by_stage) == ["filter_dialogue"]
    # 2-utterance Q&As are no dialogues; the 46 that end with the client's thanks are repaired
    assert set(counts.by_stage["filter_dialogue"]) >= {"turn_count"}
    assert "not_ending_with_counselor" not in counts.by_stage["filter_dialogue"]
    assert result.manifest.profile["flags"]["repair:trailing_client"] == 46
    assert result.manifest.profile["markers_in"]["xie_yao"] == 5 and result.manifest.profile["markers_out"]["xie_yao"] == 0
    version_dir = tmp_path / "cleaned" / "versions" / result.manifest.version
    report = (version_dir / "report" / result.manifest.run_id / "report.md").read_text()
    assert "| repair:trailing_client | 46 |" in report and "| xie_yao | 5 | 1.7% | 0 | 0.0% |" in report
    assert result.manifest.job == "clean" and result.manifest.inputs[0].rows == 300

    version = open_version("latest", root=str(tmp_path), dataset="cleaned", verify=True)
    data = version.to_table()
    source = pq.read_table(DEMO_DIALOGS)
    assert set(data["id"].to_pylist()) <= set(source["id"].to_pylist())  # the corpus's own ids, kept
    assert data["scores"].null_count == 0 and data["model"].null_count == data.num_rows
    row = data.slice(0, 1).to_pylist()[0]
    assert row["record_id"] == dialogue_record_id(row["messages"])
    assert row["messages"][0]["role"] == "user" and row["messages"][-1]["role"] == "assistant"


def test_cleans_importer_json_and_maps_roles(ray_local, tmp_path):
    leaky = good_dialogue(8)
    leaky[1] = {"role": "assistant", "content": "可以加我微信 helper_2024 聊。"}
    corpus = [{"id": 0, "topic": "成长", "messages": good_dialogue(8)}, {"id": 1, "topic": "情绪", "messages": leaky},
              {"id": 2, "topic": "成长", "messages": good_dialogue(2)}, {"id": 3, "topic": "成长", "messages": []}]
    path = tmp_path / "SoulChatCorpus.json"
    path.write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    result = run(load_config(CleanConfig, None, [f"input.path={path}", f"storage.root={tmp_path / 'out'}"]))
    assert result.manifest.counts.by_stage == {"filter_dialogue": {"turn_count": 1},
                                                  "normalize": {"empty_dialogue": 1}}
    assert result.manifest.inputs[0].uri == str(path) and result.manifest.inputs[0].rows == 4
    version = open_version("latest", root=str(tmp_path / "out"), dataset="cleaned")
    data = {row["id"]: row for row in version.to_table().to_pylist()}
    assert set(data) == {"0", "1"}  # SoulChatCorpus's integer ids, as text
    assert data["1"]["messages"][1]["content"] == "可以加我微信 <WECHAT> 聊。" and data["1"]["topic"] == "情绪"
    assert data["1"]["question_id"] == question_group(leaky[0]["content"])
    assert sorted(version.to_table("rejects")["id"].to_pylist()) == ["2", "3"]

    smile = tmp_path / "smile"
    smile.mkdir()
    for index in range(2):
        turns = [{"role": "client" if turn["role"] == "user" else "counselor", "content": turn["content"]}
                 for turn in good_dialogue(8)[index:] + ([] if index == 0 else good_dialogue(1))]
        (smile / f"smile-{index}.json").write_text(json.dumps(turns, ensure_ascii=False), encoding="utf-8")
    assert detect_format(str(smile)) == "smilechat"
    # the two share six of their turns: near-duplicates at the dedup defaults (3-grams, 0.7), so no dedup here
    result = run(load_config(CleanConfig, None, [f"input.path={smile}", f"storage.root={tmp_path / 'out2'}",
                                                 "dedup.enabled=false"]))
    # the second opens with the counselor and ends with the client: both repaired, 6 utterances kept
    assert result.manifest.counts.output_rows == 2 and result.manifest.counts.by_stage == {}
    assert result.manifest.profile["flags"] == {"repair:leading_counselor": 1, "repair:trailing_client": 1}


def test_clean_command(ray_local, tmp_path, capsys):
    assert main(["clean", "--input", DEMO_DIALOGS, "--output", str(tmp_path), "--dataset", "smile-clean",
                 "--set", "filters.dialogue.4.min_turns=2"]) == 0
    out = capsys.readouterr().out
    assert "published smile-clean version" in out and "300 in = " in out
    manifest = open_version("latest", root=str(tmp_path), dataset="smile-clean").manifest
    assert manifest.config["filters"]["dialogue"][4] == {"name": "dialogue_format", "min_turns": 2, "max_turns": None}


def test_bad_inputs_name_the_file(tmp_path, capsys):
    pq.write_table(pa.table({"id": ["a"], "dialogue": ["用户：你好"]}), tmp_path / "flat.parquet")
    assert main(["clean", "--input", str(tmp_path / "flat.parquet"), "--output", str(tmp_path / "out")]) == 2
    assert "flat.parquet: missing column 'messages'" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="notes.txt: neither Parquet nor a JSON list"):
        detect_format(str(tmp_path / "notes.txt"))
    assert not (tmp_path / "out").exists()


# -- ids and question groups --------------------------------------------------------------------------
def test_ids_are_kept_as_given_and_question_ids_come_from_the_input_when_it_has_them():
    messages = [good_dialogue(8)] * 3
    given = pa.table({"id": pa.array([7, 2**62, -1], pa.int64()), "question_id": ["psyqa-1", None, ""],
                      "messages": messages})
    rows = working_dialogues(raw_dialogues(given, source_file="s3://bucket/corpus/part-0.parquet")).to_pylist()
    assert [row["id"] for row in rows] == ["7", str(2**62), "-1"]
    assert [row["question_id"] for row in rows] == ["psyqa-1"] + [question_group(messages[0][0]["content"])] * 2
    assert len({row["record_id"] for row in rows}) == 1  # identity stays the content hash

    unnamed = pa.table({"messages": messages[:2]})
    rows = working_dialogues(raw_dialogues(unnamed, source_file="/data/part-3.parquet", first_row=10)).to_pylist()
    assert [row["id"] for row in rows] == ["part-3.parquet:10", "part-3.parquet:11"]  # as the source reader names them


@pytest.fixture(scope="module")
def cleaned_sample(ray_local, tmp_path_factory):
    """The 2,000 real SMILECHAT dialogues of the shared sample through `soulray clean` with its defaults."""
    root = tmp_path_factory.mktemp("cleaned-sample")
    run(load_config(CleanConfig, None, [f"input.path={SMILECHAT_SAMPLE / 'dialogs.parquet'}", f"storage.root={root}"]))
    return open_version("latest", root=str(root), dataset="cleaned", verify=True)


def test_clean_keeps_ids_and_groups_the_answers_to_one_question(cleaned_sample, tmp_path):
    source = pq.read_table(SMILECHAT_SAMPLE / "dialogs.parquet")["id"].to_pylist()
    # the sample's own question ids (PsyQA questions; several SMILECHAT dialogues answer each one)
    truth = {row["answer_id"]: row["question_id"] for row in pq.read_table(SMILECHAT_SAMPLE / "qa.parquet").to_pylist()}
    data, rejects = cleaned_sample.to_table(), cleaned_sample.to_table("rejects")
    for table in (data, rejects):
        assert [source[row] for row in table["source_row"].to_pylist()] == table["id"].to_pylist()

    groups, truths = defaultdict(set), defaultdict(set)
    for row in data.select(["id", "question_id"]).to_pylist():
        groups[row["question_id"]].add(truth[row["id"]])
        truths[truth[row["id"]]].add(row["question_id"])
    assert all(len(found) == 1 for found in groups.values()) and all(len(found) == 1 for found in truths.values())
    assert max(pc.value_counts(data["question_id"]).field("counts").to_pylist()) >= 5

    train, validation = split_by_question(data, validation_share=0.2, seed=3)
    assert train.num_rows + validation.num_rows == data.num_rows and validation.num_rows > 50
    sides = [{truth[answer] for answer in side["id"].to_pylist()} for side in (train, validation)]
    assert not sides[0] & sides[1]  # no PsyQA question on both sides of the fine-tuning split
    samples = next_turn_samples(data, held_out=hash_split(validation_share=0.2, seed=3), limit=None, seed=0)
    by_record = dict(zip(data["record_id"].to_pylist(), data["id"].to_pylist(), strict=True))
    assert samples.num_rows and not {truth[by_record[r]] for r in samples["record_id"].to_pylist()} & sides[0]

    rows = export_jsonl(cleaned_sample, tmp_path / "corpus.jsonl")
    exported = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == data.num_rows and sorted(row["id"] for row in exported) == sorted(data["id"].to_pylist())
    first = exported[0]
    assert first["question_id"] == data.filter(pc.equal(data["id"], first["id"]))["question_id"][0].as_py()


def test_published_data_and_rejects_load_in_datasets_polars_and_pyarrow(cleaned_sample, tmp_path):
    first = assert_readable_by_consumers(cleaned_sample, cache=tmp_path)
    row = first["data"][0]
    assert isinstance(row["id"], str) and row["messages"][0]["role"] == "user"
    assert set(row["scores"]) == set(SCORES.names) and row["scores"]["cjk_ratio"] > 0.5  # a plain dict
    assert isinstance(first["rejects"][0]["id"], str) and first["rejects"][0]["reason"]
    repetition = cleaned_sample.to_polars()["scores"].struct.field("repetition")
    assert repetition.null_count() == 0 and repetition.len() == cleaned_sample.manifest.counts.output_rows


def test_unreadable_values_are_row_rejects_in_parquet_and_json_alike(ray_local, tmp_path):
    """Issue 17, defects 4 and 11: bytes that are not UTF-8, values that are not text and unknown roles
    reject their row (the same reasons from Parquet and JSON); the other rows are published, never a
    Python repr, and the job does not crash."""
    good = good_dialogue(8)
    binary_turns = pa.list_(pa.struct([("role", pa.binary()), ("content", pa.binary())]))
    encode = lambda turns: [{"role": t["role"].encode(), "content": t["content"].encode()} for t in turns]  # noqa: E731
    bad_turns = encode(good)
    bad_turns[2] = {"role": b"assistant", "content": b"\xff\xfe not utf-8"}
    robot = encode(good[:-1]) + [{"role": b"robot", "content": "我在。".encode()}]
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(pa.table({
        "id": pa.array([b"ok", b"\xffbad-id", b"bad-text", b"robot"], pa.binary()),
        "topic": ["成长"] * 4,
        "messages": pa.array([encode(good), encode(good[::-1][::-1]), bad_turns, robot], binary_turns)}),
        folder / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([{"n": 1}]), "topic": pa.array([["成长"]]), "messages": [good]}),
                   folder / "b.parquet")
    json_path = tmp_path / "corpus.json"
    json_path.write_text(json.dumps([
        {"id": 1, "topic": "成长", "messages": good}, {"id": {"n": 1}, "topic": "成长", "messages": good},
        {"id": 3, "topic": ["成长"], "messages": good}, {"id": 4, "topic": "成长", "messages": robot_json(good)},
        {"id": 5, "topic": "成长", "messages": [{"role": "user", "content": 5}]}, "not a dialogue"],
        ensure_ascii=False), encoding="utf-8")

    expected = {"parquet": {"invalid_utf8": 2, "unknown_role": 1, "non_text_value": 1},
                "json": {"non_text_value": 3, "unknown_role": 1, "malformed_item": 1}}
    for name, path in (("parquet", folder), ("json", json_path)):
        result = run(load_config(CleanConfig, None, [f"input.path={path}", f"storage.root={tmp_path / name}",
                                                     "dedup.enabled=false"]))
        assert result.manifest.counts.by_stage.get("normalize") == expected[name], name
        version = open_version("latest", root=str(tmp_path / name), dataset="cleaned")
        assert_accounted(version)
        published = version.to_table().to_pylist()
        assert [row["id"] for row in published] == (["ok"] if name == "parquet" else ["1"])
        assert all(row["topic"] == "成长" for row in published)
        rejects = version.to_table("rejects").to_pylist()
        assert all(r["detail"] and "{" not in r["detail"].split(":")[-1][:2] for r in rejects)


def robot_json(turns):
    return turns[:-1] + [{"role": "robot", "content": "我在。"}]
