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
from tests.filters.tables import good_dialogue

DEMO_DIALOGS = "soulray/data/demo/dialogs.parquet"


def test_cleans_the_smilechat_demo_dialogues(ray_local, tmp_path):
    config = load_config(CleanConfig, None, [f"input.path={DEMO_DIALOGS}", f"storage.root={tmp_path}",
                                             "storage.rows_per_shard=100"])
    result = run(config)
    counts = result.manifest.counts
    assert counts["input_rows"] == 300 == counts["output_rows"] + counts["rejected_rows"]
    assert list(counts["by_stage"]) == ["filter_dialogue"]
    # 2-utterance Q&As are no dialogues; the 46 that end with the client's thanks are repaired
    assert set(counts["by_stage"]["filter_dialogue"]) >= {"turn_count"}
    assert "not_ending_with_counselor" not in counts["by_stage"]["filter_dialogue"]
    assert result.manifest.profile["flags"]["repair:trailing_client"] == 46
    assert result.manifest.profile["markers_in"]["xie_yao"] == 5 and result.manifest.profile["markers_out"]["xie_yao"] == 0
    report = (tmp_path / "cleaned" / "versions" / result.manifest.version / "report" / "report.md").read_text()
    assert "| repair:trailing_client | 46 |" in report and "| xie_yao | 5 | 1.7% | 0 | 0.0% |" in report
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
    # the second opens with the counselor and ends with the client: both repaired, 6 utterances kept
    assert result.manifest.counts["output_rows"] == 2 and result.manifest.counts["by_stage"] == {}
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
