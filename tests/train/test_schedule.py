"""WarmupDecayLR as DeepSpeed computes it, and the DeepSpeed config written for GPU clusters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from soulray.errors import ConfigError
from soulray.train.schedule import WarmupDecay, deepspeed_config, gradient_accumulation

PAPER = WarmupDecay()  # 30,000 steps, warmup 1,000 to 5e-5 (SOULCHAT.md)


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.0),                                   # log(1) = 0: DeepSpeed's first step has no learning rate
    (9, 5e-5 * math.log(10) / math.log(1000)),  # one third of the way in log space
    (99, 5e-5 * 2 / 3),
    (999, 5e-5 * math.log(1000) / math.log(1000)),
    (1000, 5e-5),                               # the peak: decay starts from (30,000 - 1,000) / 29,000
    (15_500, 2.5e-5),                           # half-way through the decay
    (30_000, 0.0),
    (31_000, 0.0),                              # never negative past the end
])
def test_paper_schedule_with_deepspeed_log_warmup(step, expected):
    assert PAPER.lr(step) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_linear_warmup_and_min_lr():
    schedule = WarmupDecay(total_steps=100, warmup_steps=10, max_lr=1e-3, min_lr=1e-4, warmup_type="linear")
    assert [round(schedule.lr(step), 12) for step in (0, 5, 10, 55, 100)] == [1e-4, 5.5e-4, 1e-3, 5.5e-4, 1e-4]


def test_apply_sets_every_parameter_group():
    class Optimizer:
        param_groups = [{"lr": 1.0}, {"lr": 2.0}]

    optimizer = Optimizer()
    assert PAPER.apply(optimizer, 1000) == 5e-5
    assert [group["lr"] for group in optimizer.param_groups] == [5e-5, 5e-5]


def test_global_batch_kept_by_accumulation():
    assert gradient_accumulation(global_batch_size=80, micro_batch_size=4, workers=2) == 10
    assert gradient_accumulation(global_batch_size=80, micro_batch_size=4, workers=4) == 5
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        gradient_accumulation(global_batch_size=80, micro_batch_size=3, workers=2)


def test_deepspeed_config_matches_the_loop_and_the_shipped_file():
    config = deepspeed_config(schedule=PAPER, global_batch_size=80, micro_batch_size=4, workers=4)
    assert config["train_batch_size"] == 80 == config["train_micro_batch_size_per_gpu"] * \
        config["gradient_accumulation_steps"] * 4
    assert config["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "total_num_steps": 30_000, "warmup_min_lr": 0.0, "warmup_max_lr": 5e-5, "warmup_num_steps": 1_000,
        "warmup_type": "log"}}
    assert config["zero_optimization"]["stage"] == 2 and config["bf16"] == {"enabled": True}
    # the shipped file: any world size dividing 80 / 2 (DeepSpeed derives the accumulation)
    shipped = Path(__file__).parents[2] / "soulray" / "configs" / "deepspeed-soulchat.json"
    expected = deepspeed_config(schedule=PAPER, global_batch_size=80, micro_batch_size=2, workers=None)
    assert "gradient_accumulation_steps" not in expected
    assert json.loads(shipped.read_text()) == json.loads(json.dumps(expected))
