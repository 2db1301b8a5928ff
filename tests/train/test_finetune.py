"""The fine-tuning job on a local Ray: 2 CPU workers train, fail, resume from a checkpoint and export;
LoRA. Ray Train costs ~30 s per run here, so one failed + resumed run serves several tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from soulray.config import FinetuneConfig, load_config
from soulray.errors import SoulrayError
from soulray.finetune import Fault, loop_spec, prepare_run, run, run_paths
from soulray.train.corpus import publish_dialogues
from soulray.train.loop import train_in_process
from soulray.train.schedule import WarmupDecay
from soulray.train.storage import RunPaths

pytestmark = pytest.mark.slow

SMALL = ["dataset=smile", "optim.steps=6", "optim.warmup_steps=2", "optim.max_lr=3e-3", "optim.warmup_type=linear",
         "optim.global_batch_size=8", "optim.micro_batch_size=2", "trainer.workers=2", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "trainer.validation_batches=1", "samples.max_input_tokens=64",
         "samples.max_output_tokens=32", "samples.validation_share=0.1", "model.tiny.vocab_size=512",
         "model.tiny.tokenizer_dialogues=60"]


@pytest.fixture(scope="module")
def root(smilechat, tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("store"))
    publish_dialogues(smilechat.slice(0, 120), root=folder, dataset="smile")
    return folder


def config(root: str, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"root={root}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def resumed(ray_local, root):
    """Every worker fails finishing step 4 (checkpoints every 2 steps: step 4's is never written); the
    same command again resumes."""
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError, match="simulated failure at step 4"):
        run(config(root, "run_name=crashy"), fault=Fault(step=4))
    return run(config(root, "run_name=crashy"))


def weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


def test_resume_continues_from_the_last_checkpoint_to_the_same_weights(resumed, root):
    assert resumed.resumed_from_step == 2
    assert [row["step"] for row in resumed.history] == [1, 2, 3, 4, 5, 6]
    # the same 6 steps in one process, no Ray, no failure: model, optimizer, schedule and data position all
    # came back, and 2 workers × 2 micro-batches gave the gradient of the whole global batch
    cfg = config(root, "run_name=crashy")
    paths = RunPaths.for_run(root=root, dataset="smile", run_name="crashy")
    reference, _ = train_in_process(loop_spec(cfg, paths, prepare_run(cfg, paths)))
    exported = weights(resumed.model_uri)
    for name, value in reference.state_dict().items():
        assert torch.allclose(value, exported[name], atol=1e-5), name
    checkpoints = sorted(p.name for p in (Path(resumed.run_uri) / "train").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-step-00000004", "checkpoint-step-00000006"]  # keep_checkpoints 2


def test_two_workers_train_the_loss_down_and_export(resumed):
    history = resumed.history
    schedule = WarmupDecay(total_steps=6, warmup_steps=2, max_lr=3e-3, warmup_type="linear")
    assert [row["lr"] for row in history] == pytest.approx([schedule.lr(step) for step in range(6)])
    assert history[-1]["loss"] < history[1]["loss"] - 0.1  # step 1 ran at lr 0
    assert history[-1]["validation_loss"] < history[1]["loss"]
    assert all(row["supervised_tokens"] > 0 and row["tokens_per_s"] > 0 for row in history)

    from transformers import AutoTokenizer

    model = Path(resumed.model_uri)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                         add_generation_prompt=True) == "用户：你好\n心理咨询师："
    split = json.loads((model / "split.json").read_text())
    assert split["format"] == "soulray-split/1" and split["validation"]["question_ids"]
    assert split["counts"]["train_dialogues"] + split["counts"]["validation_dialogues"] == 120
    facts = json.loads((model / "training.json").read_text())
    assert facts["steps"] == 6 and facts["train"]["samples"] == resumed.prepared["train"]["samples"]


def test_a_run_resumed_with_other_settings_is_refused(resumed, root):
    with pytest.raises(SoulrayError, match="prepared with other samples settings"):
        run(config(root, "run_name=crashy", "samples.mode=whole_dialog"))


def test_lora_on_s3_trains_only_the_adapters_and_exports_a_merged_model(ray_local, s3_config, s3_bucket, smilechat):
    """LoRA, with the version, the checkpoints (Ray Train storage) and the export on S3 (loopback)."""
    from soulray.train.storage import local_dir

    publish_dialogues(smilechat.slice(0, 120), root=s3_bucket, dataset="smile", s3=s3_config)
    s3 = [f"s3.{key}={value}" for key, value in s3_config.model_dump().items() if value is not None]
    result = run(config(s3_bucket, *s3, "run_name=lora", "model.lora.r=4", "model.lora.alpha=16",
                        "trainer.workers=1", "optim.steps=3", "trainer.checkpoint_every=3", "optim.global_batch_size=4"))
    assert result.model_uri == f"{s3_bucket}/smile/finetune/lora/model"
    with local_dir(result.model_uri, s3_config) as model, local_dir(result.run_uri, s3_config) as run_folder:
        assert json.loads((model / "adapter" / "adapter_config.json").read_text())["r"] == 4
        initial, merged = weights(run_folder / "prepared" / "init-model"), weights(model)
        state = torch.load(run_folder / "train" / "checkpoint-step-00000003" / "state.pt", weights_only=True)
    changed = {name for name in initial if not torch.equal(initial[name], merged[name])}
    assert changed and all("q_proj" in name or "v_proj" in name for name in changed)  # peft's Llama default
    assert state["model"] and all("lora_" in name for name in state["model"])  # the checkpoint holds adapters only
    assert state["step"] == 3 and state["data_position"]["samples_seen"] == 12
    assert all(row["loss"] == row["loss"] for row in result.history)  # finite, not NaN


def test_run_folders_are_absolute(tmp_path, monkeypatch):
    """`make finetune` gives a relative root; Ray Train workers run in folders of their own."""
    monkeypatch.chdir(tmp_path)
    assert run_paths(config("output"), "r1").run_uri == f"{tmp_path}/output/smile/finetune/r1"
