"""The evaluate job end to end on a local Ray: a checkpoint in an actor pool, a chat endpoint and the
judge through the local server with its faults, the report in the store; a rerun changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from soulray.cli import main as cli_main
from soulray.config import EvaluateConfig, load_config
from soulray.evaluate.samples import hash_split
from soulray.evaluation import run
from soulray.offline.server import Faults, LocalLLMServer, ServerConfig
from soulray.train.corpus import publish_dialogues

SAMPLES, JUDGED, RUNS = 24, 12, 2


def write_config(path: Path, *, root: Path, checkpoint: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "dataset": "smile", "root": str(root), "samples": SAMPLES, "test_set": "SMILECHAT",
        "split": {"validation_share": 0.3, "seed": 3},
        "models": [{"name": "tiny", "checkpoint": str(checkpoint)},
                   {"name": "chat", "endpoint_model": "gpt-3.5-turbo", "system_prompt": "你是一名心理咨询师。"}],
        "decoding": {"max_new_tokens": 16, "max_input_tokens": 192},
        "generation": {"actors": 1, "batch_size": 4, "actor_num_cpus": 0.5},
        "api": {"base_url": url, "timeout_s": 1.0, "max_retries": 4, "actors": 1, "batch_size": 8},
        "judge": {"enabled": True, "samples": JUDGED, "runs": RUNS, "max_reasks": 3},
    }, allow_unicode=True))
    return path


@pytest.mark.slow
def test_evaluate_end_to_end_and_rerun(ray_local, tmp_path, dialogues, tiny_checkpoint, capsys):
    publish_dialogues(dialogues, root=str(tmp_path / "store"), dataset="smile")
    faults = Faults(error_5xx=0.08, timeout=0.03, malformed=0.1, truncated=0.05, hang_s=2.0)
    server = LocalLLMServer(ServerConfig(faults=faults, seed=5))
    config_path = write_config(tmp_path / "evaluate.yaml", root=tmp_path / "store", checkpoint=tiny_checkpoint,
                               url=server.start())
    try:
        config = load_config(EvaluateConfig, config_path)
        result = run(config)
        first_requests = sum(s["requests"] for s in server.stats_summary().values())

        # the samples: held out by the fine-tuning rule, disjoint from the training side
        folder = Path(result.uri)
        samples = pq.read_table(folder / "samples.parquet")
        held_out = hash_split(validation_share=0.3, seed=3)
        assert samples.num_rows == SAMPLES == result.samples
        assert all(held_out(q, r) for q, r in zip(samples["question_id"].to_pylist(), samples["record_id"].to_pylist(),
                                                     strict=True))
        # every sample answered once per model; endpoint faults either retried away or recorded
        responses = pq.read_table(folder / "responses.parquet").to_pylist()
        for model in ("tiny", "chat"):
            mine = [row for row in responses if row["model"] == model]
            assert sorted(row["sample_id"] for row in mine) == sorted(samples["sample_id"].to_pylist())
            assert result.metrics[model]["failed"] == sum(row["error"] is not None for row in mine)
        assert result.metrics["chat"]["failed"] < SAMPLES // 2
        assert all(0 <= result.metrics[m][k] <= 100 for m in ("tiny", "chat") for k in ("bleu-1", "rouge-l"))
        # the judge: every rated response once per run; malformed and truncated ratings re-asked
        ratings = pq.read_table(folder / "ratings.parquet").to_pylist()
        rated = {(row["model"], row["sample_id"]) for row in ratings}
        assert len(ratings) == RUNS * len(rated) and len(rated) <= 2 * JUDGED
        assert max(row["attempts"] for row in ratings) > 1
        assert sum(row["error"] is None for row in ratings) >= 0.8 * len(ratings)
        judge = result.judge
        for model in ("tiny", "chat"):
            empathy = judge["models"][model]["empathy"]
            assert empathy["low"] <= empathy["mean"] <= empathy["high"]
        assert judge["agreement"]["safety"]["runs"] == RUNS and judge["agreement"]["empathy"]["items"] > 0
        assert result.usage["judge"]["cost_usd"] > 0 and result.usage["chat"]["tokens"]["prompt"] > 0

        # the report, written last through its manifest
        manifest = json.loads((folder / "evaluation.json").read_text())
        for name in ("report.md", "metrics.png", "metrics.json", "ratings.parquet"):
            assert manifest["artifacts"][name]["bytes"] == (folder / name).stat().st_size
        report = (folder / "report.md").read_text()
        assert "| SMILECHAT | tiny |" in report and "| SoulChat | 33.78 | 20.07 |" in report  # the paper's row
        assert (folder / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # a rerun through the command line, on two generation actors instead of one: the same samples,
        # texts and figures (sampling depends on the sample, not the actor or batch), nothing paid again
        assert cli_main(["evaluate", "--config", str(config_path), "--set", "generation.actors=2"]) == 0
        assert "held-out samples" in capsys.readouterr().out
        reruns = sorted(path for path in folder.parent.iterdir() if path != folder)
        assert len(reruns) == 1
        again = json.loads((reruns[0] / "evaluation.json").read_text())
        assert again["metrics"] == manifest["metrics"] and again["judge"] == manifest["judge"]
        assert pq.read_table(reruns[0] / "responses.parquet").equals(pq.read_table(folder / "responses.parquet"))
        paid_again = sum(s["requests"] for s in server.stats_summary().values()) - first_requests
        assert paid_again == 0
    finally:
        server.stop()


def test_finetune_references_and_where_the_report_goes(tmp_path):
    from soulray.errors import SoulrayError
    from soulray.evaluation import evaluation_home, resolve_checkpoint, trained_samples

    runs = tmp_path / "smile" / "finetune"
    for name, finished in (("ft-a", True), ("ft-b", True), ("ft-c", False)):
        (runs / name / "model").mkdir(parents=True)
        (runs / name / "prepared").mkdir()
        (runs / name / "prepared" / "prepared.json").write_text(json.dumps(
            {"model_uri": str(runs / name / "prepared" / "init-model"), "samples": {"run": name}}))
        if finished:
            (runs / name / "model" / "training.json").write_text(json.dumps({"samples": {"run": name}}))
    config = load_config(EvaluateConfig, None, [f"root={tmp_path}", "dataset=smile",
                                                "models=[{name: m, checkpoint: 'finetune:latest'}]"])
    newest = max(("ft-a", "ft-b"), key=lambda name: (runs / name / "model" / "training.json").stat().st_mtime_ns)
    assert resolve_checkpoint("finetune:latest", config) == str(runs / newest / "model")  # ft-c never finished
    assert resolve_checkpoint("finetune:ft-a:initial", config) == str(runs / "ft-a" / "prepared" / "init-model")
    assert resolve_checkpoint("/some/folder", config) == "/some/folder"
    with pytest.raises(SoulrayError, match="no finished fine-tuning export"):
        resolve_checkpoint("finetune:ft-c", config)
    # prompted as trained: the run's samples settings, before and after; a soulray export's; none for others
    assert trained_samples("finetune:ft-a:initial", config) == trained_samples("finetune:ft-a", config) == {"run": "ft-a"}
    assert trained_samples(str(runs / "ft-b" / "model"), config) == {"run": "ft-b"}
    assert trained_samples(str(tmp_path), config) is None
    # beside the evaluated model's training metrics, or under the dataset for any other model
    tuned = config.model_copy(update={"models": [config.models[0].model_copy(
        update={"checkpoint": str(runs / "ft-a" / "model")})]})
    assert evaluation_home(tuned) == str(runs / "ft-a")
    other = config.model_copy(update={"models": [config.models[0].model_copy(update={"checkpoint": "/elsewhere"})]})
    assert evaluation_home(other) == f"{tmp_path}/smile"
