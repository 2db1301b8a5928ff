"""The training loop every Ray Train worker runs, and the step it shares with a plain torch loop.

Data position is a pure function of (seed, step): the samples of global step s are positions
[s·B, (s+1)·B) of a sequence of seeded per-epoch permutations, and worker r takes its contiguous share.
So a checkpoint needs only the step to resume the data exactly, any number of workers reads the same
global batches, and the loss of a step is normalised by the supervised tokens of the whole global batch
(every worker can count them without talking), so the gradient is the same with 1 or N workers.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from soulray.fs import S3Config
from soulray.train.samples import IGNORE_INDEX, SampleStore
from soulray.train.schedule import WarmupDecay
from soulray.train.settings import LoraSettings

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
VALIDATION_ORDER_SEED = 7_919  # a fixed subset of the validation samples, the same at every checkpoint


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs, as plain values (it travels to every worker)."""

    prepared_uri: str
    model_uri: str  # the model (and tokenizer) training starts from
    export_uri: str
    s3: S3Config
    schedule: WarmupDecay
    global_batch_size: int
    micro_batch_size: int
    lora: LoraSettings | None = None
    trust_remote_code: bool = False
    bf16: bool = True
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    validation_batches: int = 8
    threads: int = 1
    soulchat_format: bool = True
    training_facts: dict[str, Any] = field(default_factory=dict)  # written into training.json on export
    crash_at_step: int | None = None  # drills, tests: workers fail finishing this step (1-based) unless resumed


# -- data position ---------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def global_batch(step: int, *, batch_size: int, samples: int, seed: int) -> np.ndarray:
    """Sample indices of optimizer step `step` (0-based)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // samples):
        chosen = positions // samples == epoch
        indices[chosen] = _permutation(seed, int(epoch), samples)[positions[chosen] % samples]
    return indices


def worker_micro_batches(indices: np.ndarray, *, rank: int, world: int, micro_batch_size: int,
                         store: SampleStore) -> list[np.ndarray]:
    """This worker's share of a global batch, in micro-batches of similar length (less padding; the
    sum over the share, hence the gradient, does not depend on the order)."""
    share = np.array_split(indices, world)[rank]
    share = share[np.argsort(store.lengths(share), kind="stable")]
    return [share[start:start + micro_batch_size] for start in range(0, len(share), micro_batch_size)]


# -- one optimizer step ----------------------------------------------------------------------------------

@dataclass
class StepTotals:
    loss_sum: float = 0.0
    supervised: int = 0
    tokens: int = 0

    def add(self, other: StepTotals) -> None:
        self.loss_sum += other.loss_sum
        self.supervised += other.supervised
        self.tokens += other.tokens


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Summed next-token cross-entropy over supervised positions (labels != IGNORE_INDEX)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def train_step(*, model: Any, optimizer: Any, store: SampleStore, micro_batches: list[np.ndarray],
               global_supervised: int, world: int, pad_id: int, grad_clip: float, device: Any,
               autocast: Any = None) -> StepTotals:
    """Forward/backward every micro-batch (gradients synchronised once, on the last) and step."""
    import torch

    totals = StepTotals()
    optimizer.zero_grad(set_to_none=True)
    # DDP averages gradients over workers; scaling by world / global tokens makes the result the mean
    # over every supervised token of the global batch.
    scale = world / max(1, global_supervised)
    for number, indices in enumerate(micro_batches):
        batch = {key: torch.from_numpy(value).to(device) for key, value in
                 store.batch(indices, pad_id=pad_id).items()}
        last = number == len(micro_batches) - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, (autocast or nullcontext()):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum = token_loss_sum(logits, batch["labels"])
            (loss_sum * scale).backward()
        totals.add(StepTotals(float(loss_sum.detach()), int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
                              int(batch["attention_mask"].sum())))
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return totals


def validation_loss(*, model: Any, store: SampleStore, batches: int, batch_size: int, rank: int, world: int,
                    micro_batch_size: int, pad_id: int, device: Any, autocast: Any = None) -> StepTotals:
    """Summed loss over this worker's share of a fixed subset of the validation samples."""
    import torch

    totals = StepTotals()
    if len(store) == 0 or batches == 0:
        return totals
    chosen = _permutation(VALIDATION_ORDER_SEED, 0, len(store))[: batches * batch_size]
    with torch.no_grad(), (autocast or nullcontext()):
        for indices in worker_micro_batches(chosen, rank=rank, world=world, micro_batch_size=micro_batch_size,
                                            store=store):
            if len(indices) == 0:
                continue
            batch = {key: torch.from_numpy(value).to(device) for key, value in
                     store.batch(indices, pad_id=pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            totals.add(StepTotals(float(token_loss_sum(logits, batch["labels"])),
                                  int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
                                  int(batch["attention_mask"].sum())))
    return totals


# -- loading ---------------------------------------------------------------------------------------------

def read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def load_store(folder: Path, split: str) -> SampleStore:
    return SampleStore.from_tables(read_arrow(folder / f"{split}-tokens.arrow"),
                                   read_arrow(folder / f"{split}-samples.arrow"))


def write_arrow(table: pa.Table, path: Path) -> None:
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)


# -- the worker ------------------------------------------------------------------------------------------

def load_for_training(spec: LoopSpec) -> tuple[SampleStore, SampleStore, Any, Any]:
    """(train samples, validation samples, tokenizer, model, with LoRA adapters when asked)."""
    from soulray.train.model import add_lora, load_model, load_tokenizer
    from soulray.train.storage import local_dir

    with local_dir(spec.prepared_uri, spec.s3) as prepared:
        train, validation = load_store(prepared, "train"), load_store(prepared, "validation")
    with local_dir(spec.model_uri, spec.s3) as folder:
        tokenizer = load_tokenizer(folder, trust_remote_code=spec.trust_remote_code)
        model = load_model(folder, trust_remote_code=spec.trust_remote_code)
    return train, validation, tokenizer, add_lora(model, spec.lora) if spec.lora is not None else model


def make_optimizer(model: Any, spec: LoopSpec) -> Any:
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.schedule.max_lr,
                             betas=spec.betas, weight_decay=spec.weight_decay)


def train_in_process(spec: LoopSpec, *, log_every: int = 10) -> tuple[Any, list[float]]:
    """The same steps on the same global batches in this one process, without Ray (the baseline of the
    benchmark, and the reference a distributed or resumed run must match). Returns the model and its
    tokens/s per window of `log_every` steps."""
    import torch

    torch.set_num_threads(spec.threads)
    train, _, tokenizer, model = load_for_training(spec)
    optimizer = make_optimizer(model, spec)
    rates, tokens, started = [], 0, time.perf_counter()
    for step in range(spec.schedule.total_steps):
        indices = global_batch(step, batch_size=spec.global_batch_size, samples=len(train), seed=spec.seed)
        spec.schedule.apply(optimizer, step)
        torch.manual_seed(spec.seed * 1_000_003 + step * 1_009)
        tokens += train_step(model=model, optimizer=optimizer, store=train, global_supervised=train.supervised_tokens(indices),
                             micro_batches=worker_micro_batches(indices, rank=0, world=1,
                                                                micro_batch_size=spec.micro_batch_size, store=train),
                             world=1, pad_id=tokenizer.pad_token_id, grad_clip=spec.grad_clip, device="cpu").tokens
        if (step + 1) % log_every == 0:
            rates.append(tokens / (time.perf_counter() - started))
            tokens, started = 0, time.perf_counter()
    return model, rates


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: config = {"spec": LoopSpec}."""
    import ray.train
    import ray.train.torch
    import torch

    from soulray.train.model import load_trainable_state

    spec: LoopSpec = config["spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(spec.threads)
    device = ray.train.torch.get_device()
    train, validation, tokenizer, model = load_for_training(spec)

    state = _restore(ray.train.get_checkpoint())
    if state is not None:
        load_trainable_state(model, state["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, spec)
    start = 0 if state is None else state["step"]
    history: list[dict[str, Any]] = [] if state is None else state["history"]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        log.info("rank %d resumed at step %d", rank, start)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if spec.bf16 and device.type == "cuda" else None
    window, window_started = StepTotals(), time.perf_counter()

    for step in range(start, spec.schedule.total_steps):
        indices = global_batch(step, batch_size=spec.global_batch_size, samples=len(train), seed=spec.seed)
        lr = spec.schedule.apply(optimizer, step)
        torch.manual_seed(spec.seed * 1_000_003 + step * 1_009 + rank)  # dropout draws survive a resume
        window.add(train_step(model=model, optimizer=optimizer, store=train,
                              micro_batches=worker_micro_batches(indices, rank=rank, world=world,
                                                                 micro_batch_size=spec.micro_batch_size, store=train),
                              global_supervised=train.supervised_tokens(indices), world=world,
                              pad_id=tokenizer.pad_token_id, grad_clip=spec.grad_clip, device=device,
                              autocast=autocast))
        done = step + 1
        if spec.crash_at_step == done and state is None:  # after the step's work, before its report
            raise RuntimeError(f"simulated failure at step {done} (crash_at_step)")
        last = done == spec.schedule.total_steps
        checkpoint_now = last or done % spec.checkpoint_every == 0
        if not (checkpoint_now or done % spec.log_every == 0):
            continue
        metrics = _window_metrics(_all_reduce(window, device), time.perf_counter() - window_started, step=done,
                                  lr=lr, samples=len(train), batch_size=spec.global_batch_size)
        if checkpoint_now and spec.validation_batches:
            held_out = _all_reduce(validation_loss(
                model=model, store=validation, batches=spec.validation_batches, batch_size=spec.global_batch_size,
                rank=rank, world=world, micro_batch_size=spec.micro_batch_size, pad_id=tokenizer.pad_token_id,
                device=device, autocast=autocast), device)
            if held_out.supervised:
                metrics["validation_loss"] = held_out.loss_sum / held_out.supervised
        history.append(metrics)
        _report(metrics, checkpoint_now=checkpoint_now, rank=rank, model=model, optimizer=optimizer,
                history=history, spec=spec)
        window, window_started = StepTotals(), time.perf_counter()

    # after the last checkpoint (merging LoRA changes the model); a rerun of a finished run lands here too
    if rank == 0:
        _export(model, tokenizer, spec, history)


def _window_metrics(totals: StepTotals, seconds: float, *, step: int, lr: float, samples: int,
                    batch_size: int) -> dict[str, Any]:
    return {"step": step, "epoch": step * batch_size / samples, "lr": lr,
            "loss": totals.loss_sum / max(1, totals.supervised), "tokens": totals.tokens,
            "supervised_tokens": totals.supervised, "tokens_per_s": totals.tokens / max(seconds, 1e-9),
            "supervised_tokens_per_s": totals.supervised / max(seconds, 1e-9)}


def _all_reduce(totals: StepTotals, device: Any) -> StepTotals:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return totals
    values = torch.tensor([totals.loss_sum, float(totals.supervised), float(totals.tokens)], dtype=torch.float64,
                          device=device)  # NCCL reduces only tensors on the GPU
    dist.all_reduce(values)
    return StepTotals(float(values[0]), int(values[1]), int(values[2]))


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def _restore(checkpoint: Any) -> dict[str, Any] | None:
    import torch

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def _report(metrics: dict[str, Any], *, checkpoint_now: bool, rank: int, model: Any, optimizer: Any,
            history: list[dict[str, Any]], spec: LoopSpec) -> None:
    """Every worker reports (Ray Train V2 counts reports); rank 0 alone writes the checkpoint, since every
    worker holds the same weights and optimizer state after an all-reduced step."""
    import ray.train
    import torch

    from soulray.train.model import trainable_state

    if not (checkpoint_now and rank == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="soulray-ckpt-") as folder:
        torch.save({"model": trainable_state(_unwrap(model)), "optimizer": optimizer.state_dict(),
                    "step": metrics["step"], "history": history,
                    # the data position follows from these (global_batch); kept to check a resume against
                    "data_position": {"samples_seen": metrics["step"] * spec.global_batch_size,
                                      "epoch": metrics["epoch"], "seed": spec.seed}},
                   Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint-step-{metrics['step']:08d}")


def _export(model: Any, tokenizer: Any, spec: LoopSpec, history: list[dict[str, Any]]) -> None:
    from soulray.train.model import export
    from soulray.train.storage import read_bytes, upload_dir

    with tempfile.TemporaryDirectory(prefix="soulray-export-") as scratch:
        folder = Path(scratch)
        export(_unwrap(model), tokenizer, folder, soulchat_format=spec.soulchat_format)
        (folder / "split.json").write_bytes(read_bytes(f"{spec.prepared_uri}/split.json", spec.s3))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
        final = history[-1] if history else {}
        facts = {**spec.training_facts, "steps": final.get("step"), "final_loss": final.get("loss"),
                 "final_validation_loss": final.get("validation_loss"),
                 "loss_is_finite": all(math.isfinite(row["loss"]) for row in history)}
        (folder / "training.json").write_text(json.dumps(facts, ensure_ascii=False, indent=2))
        upload_dir(folder, spec.export_uri, spec.s3)
