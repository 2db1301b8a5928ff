"""The filter chains inside the regenerate job, on a real local Ray with the offline rewriter."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.regenerate import DryRun, run, summary
from soulray.store import open_version
from tests.consumers import assert_readable_by_consumers

ANSWER = "我能理解你的感受。失眠真的很折磨人。我们可以先聊聊最近发生了什么。你愿意多说一些吗？"
ROWS = [
    ("楼主你好，我最近总是失眠，电话13812345678，怎么办？", ANSWER),  # forum word + PII: cleaned, published
    ("我最近一直想自杀，活着没意思", ANSWER),  # crisis: rejected before the rewrite
    ("焦虑", "嗯"),  # too short
    ("我和男朋友总是吵架", "我是你的心理咨询师。吵架让人很累。我们一起看看吵架的原因。你们通常为什么吵？"),  # 我是: dialogue blocklist
    ("工作压力很大怎么办", ANSWER),
    ("和父母沟通很困难", ANSWER),
]


def source(tmp_path) -> str:
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question_id": [f"q{i}" for i in range(len(ROWS))],
                             "answer_id": [f"a{i}" for i in range(len(ROWS))],
                             "question": [q for q, _ in ROWS], "answer": [a for _, a in ROWS]}), path)
    return str(path)


def config(tmp_path, *overrides: str) -> RegenerateConfig:
    return load_config(RegenerateConfig, DEMO_CONFIG, [f"storage.root={tmp_path / 'out'}",
                                                       f"sources.0.path={source(tmp_path)}", *overrides])


def test_filters_clean_sources_and_dialogues_and_explain_every_drop(ray_local, tmp_path):
    result = run(config(tmp_path))
    counts = result.manifest.counts
    assert counts.input_rows == 6 == counts.output_rows + counts.rejected_rows
    assert counts.by_stage == {"filter_source": {"crisis_review": 1, "too_short": 1},
                                  "filter_dialogue": {"ethics_blocklist": 1}}
    text = summary(result)
    assert "reject  filter_source/crisis_review: 1" in text and "reject  filter_dialogue/ethics_blocklist: 1" in text

    version = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo")
    data = {row["question_id"]: row for row in version.to_table().to_pylist()}
    assert set(data) == {"q0", "q4", "q5"}
    assert [data[q]["id"] for q in ("q0", "q4", "q5")] == ["a0", "a4", "a5"]  # the source's answer ids, kept
    first_turn = data["q0"]["messages"][0]["content"]
    assert first_turn.startswith("你好，") and "<PHONE>" in first_turn and "13812345678" not in first_turn
    scores = data["q4"]["scores"]
    assert {"repetition", "cjk_ratio", "length_ratio", "advice_list_rate", "pii_redactions"} <= \
        {name for name, value in scores.items() if value is not None}
    rejects = {row["source_row"]: row for row in version.to_table("rejects").to_pylist()}
    assert {row: rejects[row]["id"] for row in rejects} == {1: "a1", 2: "a2", 3: "a3"}
    assert_readable_by_consumers(version, cache=tmp_path / "hf")
    assert rejects[1]["detail"].startswith("terms 自杀, 活着没意思 in question;")
    assert rejects[3]["stage"] == "filter_dialogue" and "我是" in rejects[3]["detail"]


def test_source_rejects_are_not_paid_for(ray_local, tmp_path):
    estimate = run(config(tmp_path, "rewrite.dry_run=true"))
    assert isinstance(estimate, DryRun) and estimate.input_rows == 6
    assert sum(model["rows"] for model in estimate.estimate.values()) == 4  # crisis and too-short rows skipped
