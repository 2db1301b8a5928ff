"""The regenerate job end to end on a real local Ray."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.regenerate import run, summary
from soulray.schema import record_id
from soulray.store import open_version
from tests.conftest import PLANTED_SECRET


def config_for(root, *overrides: str) -> RegenerateConfig:
    # without the filter chains and dedup, so counts here test reading, rewriting and publishing alone
    # (the demo has one pair of answers at Jaccard >= 0.8); tests/filters/test_regenerate_job.py and
    # test_duplicate_sources_are_paid_for_once below run the job with them
    return load_config(RegenerateConfig, DEMO_CONFIG, [f"storage.root={root}", "filters.source=[]",
                                                        "filters.dialogue=[]", "dedup.source.enabled=false",
                                                        "dedup.dialogue.enabled=false", *overrides])


def test_demo_job_publishes_every_row(ray_local, tmp_path):
    result = run(config_for(tmp_path / "out"))
    manifest = result.manifest
    assert manifest.counts.model_dump() == {"input_rows": 300, "output_rows": 300, "rejected_rows": 0, "by_stage": {}}
    assert len(manifest.data) == 3  # rows_per_shard: 100 in the demo config
    version = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo", verify=True)
    data = version.to_table()
    source = pq.read_table(DEMO_CONFIG.parent.parent / "data" / "demo" / "qa.parquet")
    expected = {record_id(q, "", a) for q, a in zip(source["question"].to_pylist(), source["answer"].to_pylist(),
                                                    strict=True)}
    assert set(data["record_id"].to_pylist()) == expected
    assert pc.count_distinct(data["record_id"]).as_py() == 300  # the demo has no exact duplicates
    first = data.slice(0, 1).to_pylist()[0]
    assert first["messages"][0]["role"] == "user" and first["messages"][-1]["role"] == "assistant"
    assert first["prompt_version"] == "soulchat-v1" and first["model"] == "gpt-3.5-turbo"
    assert manifest.inputs[0].rows == 300 and manifest.config["dataset"] == "smilechat-demo"
    text = summary(result)
    assert "300 in = 300 out + 0 rejected" in text and result.version_uri in text

    second = run(config_for(tmp_path / "out"))
    assert second.manifest.parent_version == manifest.version
    assert open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo").manifest.version \
        == second.manifest.version
    # same sources, same rows: record ids are stable across runs
    assert sorted(version.to_table()["record_id"].to_pylist()) == \
        sorted(open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo").to_table()["record_id"]
               .to_pylist())


def test_units_only_when_rewrite_is_off(ray_local, tmp_path):
    result = run(config_for(tmp_path / "out", "rewrite.enabled=false", "limit=20"))
    data = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo").to_table()
    assert data.num_rows == 20 and "answer" in data.column_names and "messages" not in data.column_names
    assert result.manifest.usage is None


def test_bad_rows_become_rejects_and_nothing_is_lost(ray_local, tmp_path):
    table = pa.table({
        "question_id": ["a", "b", "c", "d", "e"],
        "question": pa.array([b"\xe5\xa5\xbd", b"", b"\xe9\x97\xae", b"\xff", b"\xe9\x97\xae"], pa.binary()),
        "answer": ["答", "答", None, "答", "好的回答"],
    })
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=2)
    result = run(config_for(tmp_path / "out", f"sources.0.path={path}", "sources.0.columns.answer_id=question_id"))
    counts = result.manifest.counts
    assert (counts.input_rows, counts.output_rows, counts.rejected_rows) == (5, 2, 3)
    assert counts.by_stage == {"normalize": {"empty_answer": 1, "empty_question": 1, "invalid_utf8": 1}}
    rejects = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo").to_table("rejects")
    assert sorted(rejects["source_row"].to_pylist()) == [1, 2, 3]
    assert set(rejects["source_file"].to_pylist()) == {str(path)}


def test_limit_and_wide_layout(ray_local, tmp_path):
    table = pa.table({"question": [f"问题{i}" for i in range(30)],
                      "answers": [[f"回答{i}-{j}" for j in range(i % 3)] for i in range(30)]})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    result = run(config_for(tmp_path / "out", f"sources.0.path={path}", "sources.0.layout=wide",
                            "sources.0.columns={}", "limit=12"))
    assert result.manifest.counts.input_rows == 12
    assert result.manifest.counts.output_rows + result.manifest.counts.rejected_rows == 12


def test_s3_store_keeps_secrets_out_of_manifest_and_logs(ray_local, s3_config, s3_bucket, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    overrides = [f"s3.{key}={value}" for key, value in s3_config.model_dump().items() if value is not None]
    result = run(config_for(s3_bucket + "/corpus", *overrides))
    version = open_version("latest", root=s3_bucket + "/corpus", dataset="smilechat-demo", s3=s3_config, verify=True)
    assert version.to_table().num_rows == 300
    assert result.manifest.config["s3"]["secret_access_key_env"] == "SOULRAY_TEST_S3_SECRET"
    everything = [version.manifest.to_json().decode(), caplog.text, *capsys.readouterr(), summary(result),
                  json.dumps(version.to_table().to_pylist(), ensure_ascii=False)]
    assert not [text for text in everything if PLANTED_SECRET in text]


def test_source_errors_stop_before_any_write(ray_local, tmp_path):
    from soulray.errors import SourceError

    (tmp_path / "corrupt.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="corrupt.parquet"):
        run(config_for(tmp_path / "out", f"sources.0.path={tmp_path / 'corrupt.parquet'}"))
    assert not (tmp_path / "out").exists()


def test_duplicate_sources_are_paid_for_once(ray_local, llm, tmp_path):
    """Source dedup runs before the rewrite: an exact copy (another answer_id, different spacing and
    punctuation) and a near copy of an answer become reject rows naming the row they duplicate, and
    only the kept row is sent to the LLM."""
    from soulray.offline.server import SimulatedKey
    from tests.conftest import DEMO_QA, TEST_API_KEYS

    demo = pq.read_table(DEMO_QA).slice(0, 20).to_pylist()
    original = demo[0]
    copies = [{**original, "answer_id": "copy-exact", "answer": " " + original["answer"].replace("。", "．") + " "},
              {**original, "answer_id": "copy-near", "answer": original["answer"] + "加油。"}]
    source = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(demo + copies), source)
    server, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey()})
    keys = [{"name": "a", "api_key_env": "SOULRAY_TEST_KEY_A", "rpm": 100_000, "tpm": 10**8}]
    result = run(config_for(tmp_path / "out", f"sources.0.path={source}", f"rewrite.base_url={url}",
                            f"rewrite.keys={json.dumps(keys)}", "dedup.source.enabled=true"))
    counts = result.manifest.counts
    assert counts.input_rows == 22 and sum(counts.by_stage["dedup_source"].values()) == 2, counts
    assert server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]].completed == 20
    version = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo")
    family = {record_id(row["question"], "", row["answer"]) for row in [original, *copies]}
    published = family & set(version.to_table()["record_id"].to_pylist())
    assert len(published) == 1  # one keeper (the lowest record_id), named by both rejects
    rejects = version.to_table("rejects").to_pylist()
    assert {r["record_id"] for r in rejects} == family - published
    keeper = published.pop()
    assert all(keeper in r["detail"] and r["stage"] == "dedup_source" for r in rejects), rejects
    assert result.manifest.stages["dedup_source"].dedup.clusters == 1
    assert "dedup   dedup_source: 1 clusters, 2 rows marked" in summary(result)
