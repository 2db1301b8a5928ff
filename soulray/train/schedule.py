"""The learning-rate schedule SoulChat trained with, DeepSpeed's WarmupDecayLR, and the DeepSpeed config
that reproduces the paper's setup on GPU clusters.

DeepSpeed (deepspeed/runtime/lr_schedules.py, WarmupLR / WarmupDecayLR) computes, at batch iteration i:
    gamma = log(i + 1) / log(warmup_num_steps)           i < warmup, warmup_type "log" (DeepSpeed's default)
    gamma = i / warmup_num_steps                         i < warmup, warmup_type "linear"
    gamma = max(0, (total - i) / max(1, total - warmup)) afterwards
    lr    = warmup_min_lr + (warmup_max_lr - warmup_min_lr) * gamma
with warmup_num_steps raised to at least 2. A config that names WarmupDecayLR without `warmup_type` gets
the log warmup; SoulChat's paper gives only the scheduler's name and its numbers, so the type is a
setting here, written into the DeepSpeed config explicitly so both agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from soulray.errors import ConfigError

WarmupType = Literal["log", "linear"]


@dataclass(frozen=True)
class WarmupDecay:
    total_steps: int = 30_000  # SoulChat: 30,000 steps
    warmup_steps: int = 1_000  # SoulChat: warmup_steps 1,000
    max_lr: float = 5e-5  # SoulChat: warmup_max_lr 5e-5
    min_lr: float = 0.0
    warmup_type: WarmupType = "log"

    def gamma(self, step: int) -> float:
        warmup = max(2, self.warmup_steps)
        if step < warmup:
            if self.warmup_type == "log":
                return math.log(step + 1) / math.log(warmup)
            return step / warmup
        return max(0.0, (self.total_steps - step) / max(1.0, self.total_steps - warmup))

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based), as DeepSpeed's last_batch_iteration."""
        return self.min_lr + (self.max_lr - self.min_lr) * self.gamma(step)

    def apply(self, optimizer: Any, step: int) -> float:
        """Set every parameter group of `optimizer` to the rate of `step`; return it. The step counter
        lives in the training state, so the schedule itself has nothing to checkpoint."""
        rate = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate


def deepspeed_config(*, schedule: WarmupDecay, global_batch_size: int, micro_batch_size: int, workers: int | None,
                     zero_stage: int = 2, bf16: bool = True, grad_clip: float = 1.0, weight_decay: float = 0.0,
                     betas: tuple[float, float] = (0.9, 0.999)) -> dict[str, Any]:
    """A DeepSpeed config with the same batch arithmetic, optimizer and schedule as the Ray Train loop:
    SoulChat's numbers by default (batch 80, WarmupDecayLR 1,000 → 5e-5, 30,000 steps); ZeRO-2 as MeChat
    used. DeepSpeed checks train_batch_size = micro × accumulation × world size; with `workers` None the
    accumulation is left out and DeepSpeed derives it from the world size it runs on."""
    accumulation = {} if workers is None else {"gradient_accumulation_steps": gradient_accumulation(
        global_batch_size=global_batch_size, micro_batch_size=micro_batch_size, workers=workers)}
    return {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        **accumulation,
        "gradient_clipping": grad_clip,
        "optimizer": {"type": "AdamW", "params": {"lr": schedule.max_lr, "betas": list(betas), "eps": 1e-8,
                                                  "weight_decay": weight_decay}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": schedule.total_steps, "warmup_min_lr": schedule.min_lr,
            "warmup_max_lr": schedule.max_lr, "warmup_num_steps": schedule.warmup_steps,
            "warmup_type": schedule.warmup_type}},
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }


def gradient_accumulation(*, global_batch_size: int, micro_batch_size: int, workers: int) -> int:
    """Micro-batches each worker accumulates so that every optimizer step sees `global_batch_size`
    samples whatever the worker count."""
    per_step = micro_batch_size * workers
    if global_batch_size % per_step:
        raise ConfigError(f"optim.global_batch_size {global_batch_size} is not a multiple of micro_batch_size × "
                         f"workers = {micro_batch_size} × {workers}; the global batch must split evenly")
    return global_batch_size // per_step
