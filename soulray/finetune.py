"""The fine-tuning job, top to bottom: a published version → samples → Ray Train → a Hugging Face model.

1. open the version through its manifest; split its dialogues by question_id;
2. prepare the run once (tokenizer, tiny model if no model is given, samples, split.json, deepspeed.json);
   a run given an existing run_name reuses what it prepared and resumes from its last checkpoint;
3. train with ray.train.torch.TorchTrainer (Ray Train V2), checkpoints in <run>/train via Ray Train storage;
4. rank 0 exports the final model in Hugging Face format to <run>/model, with split.json beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from soulray.config import FinetuneConfig, check_named_secrets
from soulray.errors import SoulrayError
from soulray.fs import resolve
from soulray.runtime import init_ray
from soulray.store import open_version
from soulray.train.loop import LoopSpec, train_loop_per_worker
from soulray.train.prepare import PREPARED, Prepared, dialogues_of, prepare, schedule_of
from soulray.train.storage import RunPaths, exists, ray_storage, read_bytes, read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """A drill: every worker fails finishing step `step` (1-based, before its report or checkpoint) in a
    run that has not resumed yet (tests, recovery drills)."""

    step: int


@dataclass(frozen=True)
class FinetuneResult:
    run_name: str
    run_uri: str
    model_uri: str
    prepared: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def run(config: FinetuneConfig, *, fault: Fault | None = None) -> FinetuneResult:
    check_named_secrets(config)  # before Ray or any pipeline starts: fails in a second, naming the key
    started = time.perf_counter()
    run_name = config.run_name or f"ft-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    paths = run_paths(config, run_name)
    prepared = prepare_run(config, paths)
    timings = {"prepare_s": time.perf_counter() - started}
    init_ray(config.ray)

    resumed_from = _last_checkpoint_step(paths, config)
    if resumed_from is not None:
        log.info("run %s: resuming from the checkpoint of step %d", run_name, resumed_from)
    spec = loop_spec(config, paths, prepared, crash_at_step=fault.step if fault else None)
    fit_started = time.perf_counter()
    _trainer(config, paths, spec).fit()
    timings["train_s"] = time.perf_counter() - fit_started
    timings["total_s"] = time.perf_counter() - started
    history = [json.loads(line) for line in read_bytes(f"{paths.model}/metrics.jsonl", config.s3).splitlines() if line]
    return FinetuneResult(run_name=run_name, run_uri=paths.run_uri, model_uri=paths.model, prepared=prepared.facts,
                          history=history, resumed_from_step=resumed_from, timings_s=timings)


def run_paths(config: FinetuneConfig, run_name: str) -> RunPaths:
    # absolute: Ray Train workers run in folders of their own, where a relative root means something else
    return RunPaths.for_run(root=resolve(config.root, config.s3).uri, dataset=config.dataset, run_name=run_name)


def loop_spec(config: FinetuneConfig, paths: RunPaths, prepared: Prepared, *,
              crash_at_step: int | None = None) -> LoopSpec:
    """What every worker gets: this job's settings as plain values, no config tree."""
    optim, trainer = config.optim, config.trainer
    return LoopSpec(
        prepared_uri=paths.prepared, model_uri=prepared.model_uri, export_uri=paths.model, s3=config.s3,
        schedule=schedule_of(config), global_batch_size=optim.global_batch_size,
        micro_batch_size=optim.micro_batch_size, lora=config.model.lora,
        trust_remote_code=config.model.trust_remote_code, bf16=config.model.precision == "bf16",
        weight_decay=optim.weight_decay, betas=optim.betas, grad_clip=optim.grad_clip, seed=optim.seed,
        log_every=trainer.log_every, checkpoint_every=trainer.checkpoint_every,
        validation_batches=trainer.validation_batches, threads=max(1, math.ceil(trainer.cpus_per_worker)),
        soulchat_format=config.samples.format == "soulchat", crash_at_step=crash_at_step,
        training_facts={"run_name": paths.run_uri.rsplit("/", 1)[-1], "workers": trainer.workers, **prepared.facts},
    )


def prepare_run(config: FinetuneConfig, paths: RunPaths) -> Prepared:
    """What an earlier attempt of this run prepared (refusing other settings), or a fresh preparation
    from the version."""
    marker = f"{paths.prepared}/{PREPARED}"
    if exists(marker, config.s3):
        facts = read_json(marker, config.s3)
        changed = [key for key in ("samples", "model", "optim") if facts[key] != getattr(config, key).model_dump(mode="json")]
        if changed:
            raise SoulrayError(f"{paths.run_uri}: this run was prepared with other {', '.join(changed)} settings; "
                               "start a new run (leave run_name unset) to train with these")
        log.info("run %s: reusing the samples prepared from version %s", paths.run_uri, facts["source"]["version"])
        return Prepared(facts)
    version = open_version(config.version, root=config.root, dataset=config.dataset, s3=config.s3)
    manifest = version.manifest
    where = version.store.version_uri(manifest.version)
    source = {"dataset": manifest.dataset, "version": manifest.version, "version_uri": where,
              "output_rows": manifest.counts.output_rows}
    return prepare(config, dialogues=dialogues_of(version.to_table(), where=where), prepared_uri=paths.prepared,
                   source=source)


def _trainer(config: FinetuneConfig, paths: RunPaths, spec: LoopSpec):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, filesystem = ray_storage(paths.run_uri, config.s3)
    trainer = config.trainer
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=trainer.workers, use_gpu=trainer.use_gpu,
                                     resources_per_worker={"CPU": trainer.cpus_per_worker,
                                                           **({"GPU": 1} if trainer.use_gpu else {})}),
        run_config=RunConfig(name=paths.train_name, storage_path=storage_path, storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=trainer.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=trainer.max_failures)),
    )


def _last_checkpoint_step(paths: RunPaths, config: FinetuneConfig) -> int | None:
    """The step of the newest checkpoint an earlier attempt left (for the log and the result)."""
    location = resolve(f"{paths.run_uri}/{paths.train_name}", config.s3)
    try:
        infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    except OSError:
        return None
    steps = [int(info.base_name.rsplit("-", 1)[-1]) for info in infos
             if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint-step-")]
    return max(steps) if steps else None


def summary(result: FinetuneResult) -> str:
    final = result.history[-1] if result.history else {}
    train, validation = result.prepared.get("train", {}), result.prepared.get("validation", {})
    lines = [
        f"fine-tuned on {result.prepared['source']['dataset']} version {result.prepared['source']['version']}"
        f" ({result.prepared['samples']['mode']}, {train.get('samples')} train samples from {train.get('dialogues')} "
        f"dialogues; {validation.get('dialogues')} held out)",
        f"  run      {result.run_name} at {result.run_uri}"
        + (f" (resumed from step {result.resumed_from_step})" if result.resumed_from_step is not None else ""),
        f"  steps    {final.get('step')}: loss {final.get('loss', float('nan')):.4f}"
        + (f", validation loss {final['validation_loss']:.4f}" if "validation_loss" in final else "")
        + f", {final.get('tokens_per_s', 0):,.0f} tokens/s",
        f"  model    {result.model_uri}  (Hugging Face format; split.json beside it)",
        f"  time     {result.timings_s.get('prepare_s', 0):.0f} s preparing, {result.timings_s.get('train_s', 0):.0f} s "
        "in Ray Train (start-up, training, checkpoints, export)",
        f"  resume   soulray finetune --set run_name={result.run_name} (same settings) continues from the last checkpoint",
    ]
    return "\n".join(lines)
