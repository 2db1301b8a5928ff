"""Persona and quality gate inside the regenerate job, on a real local Ray, against the embedded offline
server over HTTP, on rows of the real SMILECHAT sample."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.regenerate import DryRun, run, summary
from soulray.store import open_version
from tests.accounting import assert_accounted
from tests.conftest import SMILECHAT_SAMPLE

KINDS = {"rewrite", "persona", "judge", "revision"}


def job(root, *overrides: str, limit: int = 80) -> RegenerateConfig:
    # the default dialogue filter chain stays on (a revision goes through it); dedup off: not the subject
    return load_config(RegenerateConfig, DEMO_CONFIG, [
        f"storage.root={root}", f"sources=[{{path: {SMILECHAT_SAMPLE / 'qa.parquet'}}}]", f"limit={limit}",
        "dataset=gate", "rewrite.actors=2", "rewrite.batch_size=16", "dedup.source.enabled=false",
        "dedup.dialogue.enabled=false", "quality_gate.enabled=true", "rewrite.persona.enabled=true",
        "rewrite.prompt=soulchat-persona-v1", *overrides])


def test_gate_and_persona_publish_scored_dialogues_and_account_for_every_row(ray_local, tmp_path):
    result = run(job(tmp_path))
    version = open_version("latest", root=str(tmp_path), dataset="gate", verify=True)
    assert_accounted(version)
    manifest = version.manifest
    gate = manifest.stages["quality_gate"].gate
    # all three ways through the gate happen on the real sample
    assert gate.passed > 0 and gate.revised_passed > 0 and gate.rejected["below_threshold"] > 0
    rejected_by_gate = manifest.counts.by_stage["quality_gate"]
    assert gate.judged == gate.passed + gate.revised_passed + sum(gate.rejected.values())
    assert rejected_by_gate == gate.rejected
    assert gate.judged == manifest.counts.input_rows - sum(
        sum(reasons.values()) for stage, reasons in manifest.counts.by_stage.items() if stage != "quality_gate")
    data = version.to_table()
    scores = data["gate"].to_pylist()
    assert all(score is not None and score["total"] >= 7 and score["rubric_version"] == "gate-v1" for score in scores)
    assert sum(score["revised"] for score in scores) == gate.revised_passed
    assert any(score["first_total"] < 7 for score in scores if score["revised"])  # (or a 0 somewhere)
    personas = [json.loads(text) for text in data["persona"].to_pylist()]
    assert all(persona["neuroticism"] in ("低", "中", "高") and persona["source"] == "llm" for persona in personas)
    assert data["prompt_version"].unique().to_pylist() == ["soulchat-persona-v1"]
    rejects = version.to_table("rejects").filter(pc.equal(version.to_table("rejects")["stage"], "quality_gate"))
    assert all(detail.split(" ")[0].endswith("/10") for detail in rejects["detail"].to_pylist())
    kinds = manifest.usage.kinds
    assert set(kinds) == KINDS and kinds["revision"].paid == gate.revised_passed + gate.rejected["below_threshold"]
    assert kinds["judge"].paid == gate.judged + kinds["revision"].paid  # no re-asks: the server parses
    # every call of every kind went through the one broker: its per-model totals are the kinds' sums
    model = manifest.usage.models["gpt-3.5-turbo"]
    assert model.ok == sum(stats.paid for stats in kinds.values())
    assert abs(model.cost_usd - sum(stats.cost_usd for stats in kinds.values())) < 1e-6
    text = summary(result)
    assert "gate    per published dialogue:" in text and "calls   revision:" in text
    report = [shard.path for shard in manifest.report]
    assert any(path.endswith("gate.png") for path in report)

    # a rerun pays for nothing: profiles, rewrites, ratings and revisions all come from the cache
    again = run(job(tmp_path)).manifest
    assert all(stats.paid == 0 for stats in again.usage.kinds.values()), again.usage.kinds
    assert again.counts == manifest.counts
    # the same facts; its busy time through the pipeline's clock
    assert again.stages["quality_gate"].gate == gate and manifest.stages["quality_gate"].seconds["busy"] > 0
    assert list(manifest.stages)[-1] == "quality_gate"  # last in the pipeline, after dialogue dedup


def test_a_budget_stop_during_the_gate_still_accounts_for_every_row(ray_local, tmp_path):
    # gpt-4 prices: $0.30 runs out among the first rows' rewrites, ratings and revisions
    result = run(job(tmp_path, "rewrite.budget_usd=0.3", "rewrite.models=[{name: gpt-4}]", limit=60))
    version = open_version("latest", root=str(tmp_path), dataset="gate")
    assert_accounted(version)
    by_stage = result.manifest.counts.by_stage
    stopped = {stage for stage, reasons in by_stage.items() if "budget_exhausted" in reasons}
    assert stopped and stopped <= {"rewrite", "quality_gate"}, by_stage
    assert result.manifest.cost_usd <= 0.3 + 0.05  # at most the calls already in flight on top


def test_dry_run_counts_the_persona_and_gate_calls(ray_local, tmp_path):
    result = run(job(tmp_path, "rewrite.dry_run=true", limit=40))
    assert isinstance(result, DryRun)
    assert set(result.estimate) == {"gpt-3.5-turbo", "gpt-3.5-turbo (persona)", "gpt-3.5-turbo (judge)",
                                    "gpt-3.5-turbo (revision)"}
    assert result.estimate["gpt-3.5-turbo (judge)"]["cost_usd"] > 0
    assert "(judge)" in summary(result)
