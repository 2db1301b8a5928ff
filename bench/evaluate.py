"""Evaluation benchmarks on this CPU machine with the tiny model and the SMILECHAT sample (CC0).

- generation throughput: new tokens/s of the evaluate job's checkpoint actor pool (2 actors, per-sample
  seeded sampling) vs a plain single-process Hugging Face `generate` loop (its own sampler, same model,
  samples, decoding and batch size), measured in the same run;
- the paper's metrics of the tiny model after a short fine-tuning run vs the same model before it (its
  initial weights), on the same held-out samples: fine-tuning must move them up, however small the model;
- the judge's cost per 100 rated responses (two judge runs each) through the local server, at list price.

    python bench/evaluate.py --quick          # alone; bench/run.py runs it with the rest
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "smilechat-sample"
DEMO = Path(__file__).resolve().parents[1] / "soulray" / "data" / "demo"


def fine_tune(root: Path) -> dict[str, Any]:
    """The demo fine-tuning run (`make finetune`'s config: the tiny model, its steps, learning rate) on the
    sample; returns its training facts."""
    from soulray.cli import FINETUNE_DEMO_CONFIG
    from soulray.config import FinetuneConfig, load_config
    from soulray.finetune import run

    config = load_config(FinetuneConfig, FINETUNE_DEMO_CONFIG, [
        f"root={root}", "dataset=smile", "run_name=bench-eval", "samples.validation_share=0.05", "ray.num_cpus=4"])
    result = run(config)
    final = result.history[-1]
    return {"steps": final["step"], "loss": final["loss"], "validation_loss": final.get("validation_loss"),
            "epochs": final["epoch"], "tiny": config.model.tiny.model_dump(), "max_lr": config.optim.max_lr}


def evaluate(root: Path, *, samples: int, max_new_tokens: int, judged: int) -> dict[str, Any]:
    from soulray.config import EvaluateConfig, load_config
    from soulray.evaluation import run

    config = load_config(EvaluateConfig, None, [
        f"root={root}", "dataset=smile", f"samples={samples}", "test_set=SMILECHAT",
        "models=[{name: tiny-finetuned, checkpoint: 'finetune:bench-eval'}, "
        "{name: tiny-initial, checkpoint: 'finetune:bench-eval:initial'}, "
        "{name: offline-chat, endpoint_model: gpt-3.5-turbo}]",
        f"decoding.max_new_tokens={max_new_tokens}", "generation.actors=2",
        "generation.batch_size=16", "generation.actor_num_cpus=1", "judge.enabled=true", f"judge.samples={judged}",
        "judge.runs=2", "ray.num_cpus=4"])
    started = time.perf_counter()
    result = run(config)
    manifest = json.loads(Path(result.uri, "evaluation.json").read_text())
    return {"wall_s": time.perf_counter() - started, "uri": result.uri, "metrics": result.metrics,
            "judge": result.judge, "usage": result.usage, "timings_s": manifest["timings_s"],
            "split": manifest["split"], "samples": result.samples}


def plain_generate(model_folder: str, samples: list[dict[str, Any]], *, max_new_tokens: int,
                   batch_size: int) -> dict[str, float]:
    """The baseline: one process, Hugging Face's own top-p sampler, the same prompts, decoding and batch
    size (prompts sorted by length, as the job sorts them)."""
    import torch

    from soulray.evaluate.generate import _left_padded, load_checkpoint, prompt_format, prompt_ids
    from soulray.evaluate.settings import DecodingConfig
    from soulray.fs import S3Config

    torch.set_num_threads(2)
    started = time.perf_counter()
    model, tokenizer = load_checkpoint(model_folder, s3=S3Config(), device="cpu", dtype="auto")
    decoding = DecodingConfig(max_new_tokens=max_new_tokens)
    trained = json.loads(Path(model_folder, "training.json").read_text())["samples"]
    prompt = prompt_format(tokenizer, trained=trained, decoding=decoding)
    ordered = sorted(samples, key=lambda s: sum(len(m["content"]) for m in s["history"]))
    generated = 0
    torch.manual_seed(0)
    for start in range(0, len(ordered), batch_size):
        ids = prompt_ids(tokenizer, [s["history"] for s in ordered[start:start + batch_size]], prompt)
        encoded = _left_padded(ids, tokenizer.pad_token_id)
        with torch.inference_mode():
            # top_k=0: Hugging Face samples from the top 50 by default; the paper's decoding is top-p alone
            output = model.generate(**encoded, do_sample=True, top_p=decoding.top_p, temperature=decoding.temperature,
                                    top_k=0,
                                    max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
        new = output[:, encoded["input_ids"].shape[1]:]
        generated += int(sum(_until_eos(row.tolist(), tokenizer.eos_token_id) for row in new))
    wall = time.perf_counter() - started
    return {"tokens": generated, "wall_s": wall, "tokens_per_s": generated / wall}


def _until_eos(ids: list[int], eos: int) -> int:
    return ids.index(eos) + 1 if eos in ids else len(ids)


def eos_diagnosis(model_folder: str, samples: list[dict[str, Any]], *, trained: dict[str, Any]) -> dict[str, float]:
    """Where a model would end its replies, teacher-forced along the references: the expected number of
    end-of-turn draws before the reference's own end under the model's distribution and under the paper's
    decoding (temperature 0.95, top-p 0.75), the share of those positions where eos is inside the top-p
    nucleus, and P(eos) where the reference does end. Above 1 draw before the end, replies come out short."""
    import torch
    from transformers import TopPLogitsWarper

    from soulray.evaluate.generate import load_checkpoint, prompt_format, prompt_ids
    from soulray.evaluate.settings import DecodingConfig
    from soulray.fs import S3Config

    model, tokenizer = load_checkpoint(model_folder, s3=S3Config(), device="cpu", dtype="auto")
    decoding, eos = DecodingConfig(), tokenizer.eos_token_id
    prompts = prompt_ids(tokenizer, [s["history"] for s in samples], prompt_format(tokenizer, trained=trained,
                                                                                   decoding=decoding))
    raw, warped, inside, at_end = [], [], [], []
    with torch.inference_mode():
        for prompt, sample in zip(prompts, samples, strict=True):
            target = tokenizer(sample["reference"], add_special_tokens=False)["input_ids"][:trained["max_output_tokens"] - 1]
            logits = model(input_ids=torch.tensor([prompt + target + [eos]])).logits[0, len(prompt) - 1:-1]
            plain = logits.softmax(-1)[:, eos]
            nucleus = TopPLogitsWarper(decoding.top_p)(None, logits / decoding.temperature).softmax(-1)[:, eos]
            raw.append(float(plain[:-1].sum()))
            warped.append(float(nucleus[:-1].sum()))
            inside.append(float((nucleus[:-1] > 0).float().mean()))
            at_end.append(float(plain[-1]))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"samples": len(samples), "eos_draws_before_end": mean(raw), "eos_draws_before_end_decoded": mean(warped),
            "eos_in_nucleus_share": mean(inside), "p_eos_at_end": mean(at_end)}


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from soulray.train.corpus import publish_dialogues, smilechat_dialogues

    root = workdir / "evaluate-store"
    table = smilechat_dialogues(SAMPLE if SAMPLE.is_dir() else DEMO)
    publish_dialogues(table, root=str(root), dataset="smile")
    samples, max_new, judged = (150, 128, 100) if quick else (500, 160, 100)
    started = time.perf_counter()
    training = fine_tune(root)
    fine_tune_s = time.perf_counter() - started
    evaluation = evaluate(root, samples=samples, max_new_tokens=max_new, judged=judged)

    folder = Path(evaluation["uri"])
    responses = pq.read_table(folder / "responses.parquet").to_pylist()
    tuned = [row for row in responses if row["model"] == "tiny-finetuned"]
    soulray_tokens = sum(row["completion_tokens"] for row in tuned)
    soulray_s = evaluation["timings_s"]["generate_tiny-finetuned_s"]
    model_folder = str(root / "smile" / "finetune" / "bench-eval" / "model")
    held_out = pq.read_table(folder / "samples.parquet").to_pylist()
    plain = plain_generate(model_folder, held_out, max_new_tokens=max_new, batch_size=16)
    trained = json.loads(Path(model_folder, "training.json").read_text())["samples"]
    initial_folder = str(root / "smile" / "finetune" / "bench-eval" / "prepared" / "init-model")
    eos = {name: eos_diagnosis(path, held_out[:60], trained=trained)
           for name, path in (("tiny-finetuned", model_folder), ("tiny-initial", initial_folder))}
    judge_usage, judge = evaluation["usage"]["judge"], evaluation["judge"]
    rated = judge["ratings"] / judge["runs"]
    metrics = evaluation["metrics"]
    keys = ("bleu-1", "bleu-2", "bleu-3", "bleu-4", "rouge-1", "rouge-2", "rouge-l")
    return {
        "sample_dialogues": table.num_rows, "fine_tune": training, "fine_tune_s": fine_tune_s,
        "samples": evaluation["samples"], "max_new_tokens": max_new, "split": evaluation["split"],
        "throughput": {"soulray_tokens": soulray_tokens, "soulray_s": soulray_s,
                       "soulray_tokens_per_s": soulray_tokens / soulray_s, "plain_tokens": plain["tokens"],
                       "plain_s": plain["wall_s"], "plain_tokens_per_s": plain["tokens_per_s"],
                       "ratio": (soulray_tokens / soulray_s) / plain["tokens_per_s"]},
        "metrics": metrics,
        "eos": eos,
        "fine_tuning_moves_up": {key: metrics["tiny-finetuned"][key] > metrics["tiny-initial"][key] for key in keys},
        "judge": {"rated_responses": rated, "runs": judge["runs"], "calls": judge_usage["keys"]["local"]["requests"],
                  "cost_usd": judge_usage["cost_usd"], "cost_per_100_usd": 100 * judge_usage["cost_usd"] / rated,
                  "tokens_per_100": {kind: 100 * count / rated for kind, count in judge_usage["tokens"].items()},
                  "wall_s": evaluation["timings_s"]["judge_s"], "means": judge["models"],
                  "agreement": judge["agreement"], "model": judge["judge_model"]},
        "report_md": (folder / "report.md").read_text(),
    }


def markdown(result: dict[str, Any]) -> str:
    speed, judge, metrics, tuned = result["throughput"], result["judge"], result["metrics"], result["fine_tune"]
    keys = [("B-1", "bleu-1"), ("B-2", "bleu-2"), ("B-3", "bleu-3"), ("B-4", "bleu-4"), ("R-1", "rouge-1"),
            ("R-2", "rouge-2"), ("R-L", "rouge-l"), ("distinct-2", "distinct-2"), ("avg length", "avg-length")]
    lines = [
        f"## Evaluation (tiny model, SMILECHAT sample: {result['sample_dialogues']} dialogues, "
        f"{result['samples']} held-out samples, ≤ {result['max_new_tokens']} new tokens)", "",
        "| generation throughput | new tokens | seconds | tokens/s | ratio |", "|---|---|---|---|---|",
        f"| evaluate job: 2 checkpoint actors, per-sample seeded sampling (incl. actor start-up) | "
        f"{speed['soulray_tokens']:,} | {speed['soulray_s']:.1f} | {speed['soulray_tokens_per_s']:,.0f} | "
        f"{speed['ratio']:.2f}× |",
        f"| plain HF generate, 1 process, 2 threads (incl. model load) | {speed['plain_tokens']:,} | "
        f"{speed['plain_s']:.1f} | {speed['plain_tokens_per_s']:,.0f} | 1.00× |", "",
        f"Fine-tuned with the demo config ({tuned['steps']} steps = {tuned['epochs']:.2f} epochs, hidden "
        f"{tuned['tiny']['hidden_size']} × {tuned['tiny']['layers']} layers, lr {tuned['max_lr']:g}; training loss "
        f"{tuned['loss']:.2f}" + (f", validation loss {tuned['validation_loss']:.2f}" if tuned['validation_loss'] else "")
        + f"; {result['fine_tune_s']:.0f} s) vs the same model before fine-tuning (its initial random weights), on "
        "the same samples (×100):", "",
        "| model | " + " | ".join(label for label, _ in keys) + " |", "|---|" + "---|" * len(keys),
        *(f"| {model} | " + " | ".join(f"{scores[key]:.2f}" for _, key in keys) + " |"
          for model, scores in metrics.items()), "",
        "Where replies end, teacher-forced along 60 references: expected end-of-turn draws before the reference's "
        "own end, under the model's distribution → under the paper's decoding; share of those positions with eos "
        "inside the top-p nucleus; P(eos) at the reference's end: " + "; ".join(
            f"{name} {d['eos_draws_before_end']:.2f} → {d['eos_draws_before_end_decoded']:.2f}, "
            f"{d['eos_in_nucleus_share']:.0%}, {d['p_eos_at_end']:.3f}" for name, d in result["eos"].items()) + ".", "",
        "Fine-tuning moved up: " + ", ".join(f"{key} {'yes' if up else 'NO'}"
                                             for key, up in result["fine_tuning_moves_up"].items())
        + f" (references average {metrics['tiny-finetuned']['reference-avg-length']:.0f} characters; character BLEU "
          "pays a brevity penalty below the reference's length and none above, so the untrained model, which fills "
          "every new token, pays none)", "",
        f"Judge through the local server ({judge['model']} list price, {judge['runs']} runs per response): "
        f"{judge['calls']} calls for {judge['rated_responses']:.0f} responses, ${judge['cost_usd']:.4f}; "
        f"per 100 responses ${judge['cost_per_100_usd']:.4f}, "
        f"{judge['tokens_per_100']['prompt']:,.0f} prompt + {judge['tokens_per_100']['completion']:,.0f} completion "
        f"tokens; {judge['wall_s']:.0f} s. Fleiss' κ between runs (offline server's seeded drift): "
        + ", ".join(f"{name} {a['fleiss_kappa']:.2f}" for name, a in judge["agreement"].items() if a["fleiss_kappa"]
                    is not None),
    ]
    return "\n".join(lines)


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results", help="folder for evaluate.json and evaluate.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        result = run(Path(workdir), args.quick)
    (out / "evaluate-report.md").write_text(result["report_md"])
    (out / "evaluate.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "evaluate.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
