"""Fine-tuning benchmarks on this CPU machine with the tiny model and the SMILECHAT sample (CC0).

- throughput: tokens/s through Ray Train with 2 workers vs a plain single-process torch loop on the same
  prepared samples, same model, same global batches, same step code, measured in the same run (plain loop
  before and after the Ray run; medians over log windows, the first window of each dropped as warm-up);
- tokens processed per supervised token, per_turn vs whole_dialog, at the paper's limits (1,536 / 512);
- the loss curve of the Ray run (a few hundred steps), as a PNG.

    python bench/train.py --quick          # alone; bench/run.py runs it with the rest
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "smilechat-sample"
LIMITS = ["samples.max_input_tokens=256", "samples.max_output_tokens=128"]


def _config(root: Path, *overrides: str):
    from soulray.config import FinetuneConfig, load_config

    return load_config(FinetuneConfig, None, [
        f"root={root}", "dataset=smile", "samples.validation_share=0.05", "optim.max_lr=1e-3",
        "optim.warmup_steps=20", "optim.global_batch_size=16", "optim.micro_batch_size=4", "trainer.workers=2",
        "trainer.log_every=10", "trainer.validation_batches=4", "ray.num_cpus=4", *overrides])


def tokens_per_supervised(root: Path) -> dict[str, Any]:
    """Both modes over the whole sample at SoulChat's limits, without training (prepare only)."""
    from soulray.finetune import prepare_run
    from soulray.train.storage import RunPaths

    out: dict[str, Any] = {}
    for mode in ("per_turn", "whole_dialog"):
        config = _config(root, f"samples.mode={mode}", f"run_name=modes-{mode}", "samples.validation_share=0.01")
        facts = prepare_run(config, RunPaths.for_run(root=str(root), dataset="smile", run_name=config.run_name)).facts
        train = facts["train"]
        out[mode] = {**train, "processed_per_supervised": train["processed_tokens"] / train["supervised_tokens"]}
    out["saving"] = out["per_turn"]["processed_per_supervised"] / out["whole_dialog"]["processed_per_supervised"]
    return out


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    from soulray.finetune import loop_spec, prepare_run
    from soulray.finetune import run as finetune
    from soulray.train.corpus import publish_dialogues, smilechat_dialogues
    from soulray.train.loop import train_in_process
    from soulray.train.storage import RunPaths

    root = workdir / "train-store"
    table = smilechat_dialogues(SAMPLE)
    publish_dialogues(table, root=str(root), dataset="smile")
    modes = tokens_per_supervised(root)

    steps, plain_steps = (100, 30) if quick else (300, 60)
    config = _config(root, f"optim.steps={steps}", f"trainer.checkpoint_every={steps // 2}", *LIMITS,
                     "run_name=bench-ray")
    paths = RunPaths.for_run(root=str(root), dataset="smile", run_name="bench-ray")
    # prepared once: both sides train on the same samples from the same initial model, with the same step
    # code. Ray Train workers run one torch thread each; the plain loop runs with 1 and with 2 threads
    # (both cores) and the faster is the baseline: 2 threads were ~10× slower on this shared machine.
    spec = loop_spec(config, paths, prepare_run(config, paths))
    plain = {threads: replace(spec, threads=threads, schedule=replace(spec.schedule, total_steps=count))
             for threads, count in ((1, plain_steps), (2, 20))}
    plain_rates: dict[int, list[float]] = {1: [], 2: []}
    for threads, loop in plain.items():
        plain_rates[threads] += train_in_process(loop, log_every=10)[1][1:]
    result = finetune(config)
    ray_wall = result.timings_s["train_s"]
    for threads, loop in plain.items():
        plain_rates[threads] += train_in_process(loop, log_every=10)[1][1:]

    ray_rates = [row["tokens_per_s"] for row in result.history if row["step"] % 10 == 0][1:]
    plain_by_threads = {threads: statistics.median(rates) for threads, rates in plain_rates.items()}
    ray_tps, plain_tps = statistics.median(ray_rates), max(plain_by_threads.values())
    tokens_total = sum(row["tokens"] for row in result.history)
    curve = [{"step": row["step"], "loss": row["loss"], **({"validation_loss": row["validation_loss"]}
                                                           if "validation_loss" in row else {})} for row in result.history]
    png = _plot(curve, workdir / "loss.png")
    return {
        "sample_dialogues": table.num_rows, "train_samples": result.prepared["train"]["samples"],
        "throughput": {"ray_2_workers_tokens_per_s": ray_tps, "plain_1_process_tokens_per_s": plain_tps,
                       "plain": [{"threads": threads, "tokens_per_s": plain_by_threads[threads],
                                  "windows": len(plain_rates[threads])} for threads in plain_rates],
                       "ratio": ray_tps / plain_tps, "ray_whole_run_tokens_per_s": tokens_total / ray_wall,
                       "ray_wall_s": ray_wall, "steps": steps, "ray_windows": len(ray_rates)},
        "modes": modes, "loss_curve": curve, "loss_png": png, "model": result.model_uri,
    }


def _plot(curve: list[dict[str, float]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="train loss (per supervised token)")
    held = [p for p in curve if "validation_loss" in p]
    axis.plot([p["step"] for p in held], [p["validation_loss"] for p in held], "o-", label="validation loss")
    axis.set_xlabel("optimizer step (global batch 16)")
    axis.set_ylabel("cross-entropy (nats)")
    axis.set_title("tiny model on the SMILECHAT sample, 2 Ray Train CPU workers")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)


def _plain_row(row: dict[str, Any], *, baseline: float) -> str:
    threads = f"{row['threads']} thread" + ("s" if row["threads"] > 1 else "")
    ratio = "1.00× (baseline)" if row["tokens_per_s"] == baseline else f"{row['tokens_per_s'] / baseline:.2f}×"
    return (f"| plain torch loop, 1 process, {threads} (median of {row['windows']} windows) | "
            f"{row['tokens_per_s']:,.0f} | {ratio} |")


def markdown(result: dict[str, Any]) -> str:
    speed, modes = result["throughput"], result["modes"]
    per_turn, whole = modes["per_turn"], modes["whole_dialog"]
    curve = result["loss_curve"]
    points = [curve[0], *curve[len(curve) // 4::len(curve) // 4]] if len(curve) >= 4 else curve
    return "\n".join([
        f"## Fine-tuning (tiny model, SMILECHAT sample: {result['sample_dialogues']} dialogues)", "",
        "| training throughput | tokens/s | ratio |", "|---|---|---|",
        f"| Ray Train, 2 CPU workers (median of {speed['ray_windows']} windows) | "
        f"{speed['ray_2_workers_tokens_per_s']:,.0f} | {speed['ratio']:.2f}× |",
        *(_plain_row(row, baseline=speed["plain_1_process_tokens_per_s"]) for row in speed["plain"]),
        f"| Ray Train whole fit incl. worker start-up, checkpoints, export ({speed['steps']} steps, "
        f"{speed['ray_wall_s']:.0f} s) | {speed['ray_whole_run_tokens_per_s']:,.0f} | |", "",
        "| mode (max input 1,536 / output 512) | samples | tokens processed | supervised tokens | processed per supervised |",
        "|---|---|---|---|---|",
        *(f"| {name} | {m['samples']:,} | {m['processed_tokens']:,} | {m['supervised_tokens']:,} | "
          f"{m['processed_per_supervised']:.2f} |" for name, m in (("per_turn", per_turn), ("whole_dialog", whole))),
        f"\nwhole_dialog processes {modes['saving']:.2f}× fewer tokens for the same supervised tokens.", "",
        "Loss curve (train loss per supervised token; validation at checkpoints): "
        + ", ".join(f"step {p['step']}: {p['loss']:.3f}" for p in points)
        + (f"; validation {curve[-1]['validation_loss']:.3f} at the end" if "validation_loss" in curve[-1] else "")
        + (f" — plot: {result['loss_png']}" if result.get("loss_png") else ""),
    ])


def keep_plot(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy the loss plot out of the benchmark's temporary folder."""
    import shutil

    if result.get("loss_png"):
        out.mkdir(parents=True, exist_ok=True)
        result["loss_png"] = str(shutil.copy(result["loss_png"], out / "train-loss.png"))
    return result


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results", help="folder for train.json, train.md and loss.png")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        result = keep_plot(run(Path(workdir), args.quick), out)
    (out / "train.json").write_text(json.dumps(result, indent=2))
    (out / "train.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
