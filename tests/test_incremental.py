"""Scheduled, incremental regeneration: a source that gained, changed and lost rows since the last
version is rewritten only where it changed (the local server counts the calls), the manifest says what
changed, and the run report renders into the version."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.llm.session import progress_line
from soulray.offline.server import SimulatedKey
from soulray.regenerate import run, summary
from soulray.store import open_version
from soulray.store.manifest import Changes
from tests.conftest import DEMO_QA, TEST_API_KEYS


def job(source, root, url, *overrides: str) -> RegenerateConfig:
    keys = [{"name": "a", "api_key_env": "SOULRAY_TEST_KEY_A", "rpm": 100_000, "tpm": 10**8}]
    return load_config(RegenerateConfig, DEMO_CONFIG, [
        f"sources.0.path={source}", f"storage.root={root}", f"rewrite.base_url={url}", f"rewrite.keys={json.dumps(keys)}",
        "filters.source=[]", "filters.dialogue=[]", *overrides])


def test_changed_source_pays_only_for_what_changed_and_reports_it(ray_local, llm, tmp_path):
    server, url = llm(keys={TEST_API_KEYS["SOULRAY_TEST_KEY_A"]: SimulatedKey()})
    calls = lambda: server.stats[TEST_API_KEYS["SOULRAY_TEST_KEY_A"]].completed  # noqa: E731
    demo = pq.read_table(DEMO_QA).slice(0, 45)
    source = tmp_path / "qa.parquet"
    pq.write_table(demo.slice(0, 40), source)
    first = run(job(source, tmp_path / "out", url))
    assert first.manifest.counts.output_rows == 40 and first.manifest.changes is None
    paid_first = calls()

    # next week's source: rows 0-4 gone, rows 5-9 edited, rows 40-44 new, rows 10-39 as they were
    answers = demo["answer"].to_pylist()
    edited = demo.set_column(demo.schema.get_field_index("answer"), "answer",
                             pa.array([a + "（已修订）" if 5 <= i < 10 else a for i, a in enumerate(answers)]))
    pq.write_table(edited.slice(5), source)
    second = run(job(source, tmp_path / "out", url))
    assert calls() - paid_first == 10  # the 5 edited rows and the 5 new ones, nothing else
    assert second.manifest.changes == Changes(parent=first.manifest.version, added=10, removed=10, kept=30)
    assert second.manifest.usage.keys["a"].requests == 10
    assert "10 added, 10 removed, 30 kept" in summary(second)

    # the report is part of the version: listed with checksums, rendered from this run's numbers
    version = open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo", verify=True)
    files = {shard.path: shard for shard in version.manifest.report}
    report = f"report/{version.manifest.run_id}"  # run-unique: no other run writes a file listed here
    assert {f"{report}/{name}" for name in ("report.md", "flow.png", "topics.png", "utterances.png",
                                            "usage.png")} <= set(files)
    folder = tmp_path / "out" / "smilechat-demo" / "versions" / version.manifest.version / report
    text = (folder / "report.md").read_text()
    assert "40 in = 40 out + 0 rejected" in text and "10 added, 10 removed, 30 kept" in text
    assert (folder / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    utterances = version.manifest.profile["utterances"]
    lengths = pc.list_value_length(version.to_table()["messages"]).to_pylist()
    assert sum(utterances.values()) == 40 and utterances[str(lengths[0])] == lengths.count(lengths[0])

    # a different model mix re-pays exactly the rows it routes differently
    third = run(job(source, tmp_path / "out", url, "rewrite.models=[{name: gpt-3.5-turbo, share: 1}, "
                                                   "{name: gpt-4, share: 1}]"))
    moved = sum(1 for row in open_version("latest", root=str(tmp_path / "out"), dataset="smilechat-demo")
                .to_table().to_pylist() if row["model"] == "gpt-4")
    assert 0 < moved < 40 and third.manifest.usage.keys["a"].requests == moved


def test_progress_line():
    snapshot = {"keys": {"a": {"requests": 12, "rate_limited": 2, "prompt_tokens": 900, "completion_tokens": 100}},
                "spent_usd": 0.5, "rows_done": 25}
    line = progress_line(snapshot, 100, elapsed_s=5.0)
    assert line == ("rewrite progress: 25/100 rows (25%), 5.0 rows/s, ETA 15s; 12 calls (2 rate-limited), "
                    "1000 tokens, $0.5000 spent")
