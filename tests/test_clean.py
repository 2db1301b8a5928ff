"""The clean job: an existing corpus (Parquet or importer JSON) → dialogue filters → a published version."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.clean import detect_format, dialogue_record_id, run
from soulray.cli import main
from soulray.config import CleanConfig, load_config
from soulray.errors import SourceError
from soulray.store import open_version
from tests.accounting import assert_accounted
from tests.filters.tables import good_dialogue

DEMO_DIALOGS = "soulray/data/demo/dialogs.parquet"


def test_cleans_the_smilechat_demo_dialogues(ray_local, tmp_path):
    config = load_config(CleanConfig, None, [f"input.path={DEMO_DIALOGS}", f"storage.root={tmp_path}",
                                             "storage.rows_per_shard=100"])
    result = run(config)
    counts = result.manifest.counts
    assert counts["input_rows"] == 300 == counts["output_rows"] + counts["rejected_rows"]
    assert list(counts["by_stage"]) == ["filter_dialogue"]
    assert {"turn_count", "not_ending_with_counselor"} <= set(counts["by_stage"]["filter_dialogue"])
    assert result.manifest.job == "clean" and result.manifest.inputs[0].rows == 300

    version = open_version("latest", root=str(tmp_path), dataset="cleaned", verify=True)
    data = version.to_table()
    source = pq.read_table(DEMO_DIALOGS)
    assert set(data["question_id"].to_pylist()) <= set(source["id"].to_pylist())
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
    assert result.manifest.counts["by_stage"] == {"filter_dialogue": {"turn_count": 1},
                                                  "normalize": {"empty_dialogue": 1}}
    assert result.manifest.inputs[0].uri == str(path) and result.manifest.inputs[0].rows == 4
    data = {row["question_id"]: row for row in open_version(
        "latest", root=str(tmp_path / "out"), dataset="cleaned").to_table().to_pylist()}
    assert data["1"]["messages"][1]["content"] == "可以加我微信 <WECHAT> 聊。" and data["1"]["topic"] == "情绪"

    smile = tmp_path / "smile"
    smile.mkdir()
    for index in range(2):
        turns = [{"role": "client" if turn["role"] == "user" else "counselor", "content": turn["content"]}
                 for turn in good_dialogue(8)[index:] + ([] if index == 0 else good_dialogue(1))]
        (smile / f"smile-{index}.json").write_text(json.dumps(turns, ensure_ascii=False), encoding="utf-8")
    assert detect_format(str(smile)) == "smilechat"
    result = run(load_config(CleanConfig, None, [f"input.path={smile}", f"storage.root={tmp_path / 'out2'}"]))
    assert result.manifest.counts["output_rows"] == 1
    assert result.manifest.counts["by_stage"] == {"filter_dialogue": {"not_starting_with_user": 1}}


def test_clean_command(ray_local, tmp_path, capsys):
    assert main(["clean", "--input", DEMO_DIALOGS, "--output", str(tmp_path), "--dataset", "smile-clean",
                 "--set", "filters.dialogue.1.min_turns=2"]) == 0
    out = capsys.readouterr().out
    assert "published smile-clean version" in out and "300 in = " in out
    manifest = open_version("latest", root=str(tmp_path), dataset="smile-clean").manifest
    assert manifest.config["filters"]["dialogue"][1] == {"name": "dialogue_format", "min_turns": 2, "max_turns": 20}


def test_bad_inputs_name_the_file(tmp_path, capsys):
    pq.write_table(pa.table({"id": ["a"], "dialogue": ["用户：你好"]}), tmp_path / "flat.parquet")
    assert main(["clean", "--input", str(tmp_path / "flat.parquet"), "--output", str(tmp_path / "out")]) == 2
    assert "flat.parquet: missing column 'messages'" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="notes.txt: neither Parquet nor a JSON list"):
        detect_format(str(tmp_path / "notes.txt"))
    assert not (tmp_path / "out").exists()


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
        assert result.manifest.counts["by_stage"].get("normalize") == expected[name], name
        version = open_version("latest", root=str(tmp_path / name), dataset="cleaned")
        assert_accounted(version)
        published = version.to_table().to_pylist()
        assert [row["question_id"] for row in published] == (["ok"] if name == "parquet" else ["1"])
        assert all(row["topic"] == "成长" for row in published)
        rejects = version.to_table("rejects").to_pylist()
        assert all(r["detail"] and "{" not in r["detail"].split(":")[-1][:2] for r in rejects)


def robot_json(turns):
    return turns[:-1] + [{"role": "robot", "content": "我在。"}]
