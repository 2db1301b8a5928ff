"""The evaluate job, top to bottom: a published version → held-out samples → every model's next
counselor turns → the paper's metrics (and optionally an LLM judge's ratings) → a report in the store.

Where the report goes: beside the evaluated model's training metrics when the first model is a soulray
fine-tuning run's export (`<root>/<dataset>/finetune/<run>/evaluations/<id>/`, next to `model/` and
its training.json), else `<root>/<dataset>/evaluations/<id>/`. Its `evaluation.json` is written last,
so an evaluation folder without one is an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from soulray.config import EvaluateConfig, check_named_secrets, config_hash
from soulray.errors import SoulrayError
from soulray.evaluate.judge import DIMENSIONS, agreement, mean_with_interval
from soulray.evaluate.metrics import score
from soulray.evaluate.report import markdown, plot
from soulray.evaluate.samples import HeldOut, hash_split, listed_split, next_turn_samples
from soulray.evaluate.settings import EvalModel
from soulray.fs import S3Config
from soulray.runtime import init_ray
from soulray.schema import EVAL_RESPONSE, JUDGE_SCORE
from soulray.store import VersionStore, open_version

log = logging.getLogger(__name__)
EVALUATION_FORMAT = "soulray.evaluation/1"
MANIFEST = "evaluation.json"


@dataclass(frozen=True)
class EvaluationResult:
    uri: str
    evaluation_id: str
    samples: int
    metrics: dict[str, dict[str, float]]  # model → metric → value (×100 for BLEU/ROUGE/distinct)
    judge: dict[str, Any] | None
    usage: dict[str, Any]
    report: str


@dataclass(frozen=True)
class Split:
    held_out: HeldOut
    description: dict[str, Any]


def run(config: EvaluateConfig) -> EvaluationResult:
    check_named_secrets(config)  # before Ray or any pipeline starts: fails in a second, naming the key
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    trained = {model.name: trained_samples(model.checkpoint, config) for model in config.models if model.checkpoint}
    config = config.model_copy(update={"models": [
        model.model_copy(update={"checkpoint": resolve_checkpoint(model.checkpoint, config)}) if model.checkpoint
        else model for model in config.models]})
    version = open_version(config.version, root=config.root, dataset=config.dataset, s3=config.s3)
    split = choose_split(config)
    split_of = split.description.get("split_of_version")
    if split_of and split_of != version.manifest.version:
        # by question, so still disjoint from training; but questions new in this version are not held out
        log.warning("evaluate: the split was made on version %s, evaluating %s: only questions it held out count",
                    split_of, version.manifest.version)
    dialogues = version.to_arrow_dataset().to_table(columns=["record_id", "question_id", "topic", "messages"])
    samples = next_turn_samples(dialogues, held_out=split.held_out, limit=config.samples, seed=config.split.seed)
    if samples.num_rows == 0:
        raise SoulrayError(f"{config.dataset} {version.manifest.version}: no held-out samples "
                           f"({dialogues.num_rows} dialogues, split {split.description['source']})")
    log.info("evaluate: %d held-out samples from %d dialogues of %s %s", samples.num_rows, dialogues.num_rows,
             config.dataset, version.manifest.version)

    init_ray(config.ray)
    store = VersionStore(config.root, config.dataset, s3=config.s3)
    timings, usage, responses = {}, {}, []
    for index, model in enumerate(config.models):
        phase = time.perf_counter()
        table, usage[model.name] = generate(model, samples, config=config, store=store, run_id=f"{run_id}-{index}",
                                            trained=trained.get(model.name))
        timings[f"generate_{model.name}_s"] = time.perf_counter() - phase
        responses.append(table)
    responses = pa.concat_tables(responses)
    metrics = {model.name: model_metrics(samples, responses, model.name) for model in config.models}

    ratings, judge = None, None
    if config.judge.enabled:
        phase = time.perf_counter()
        ratings, usage["judge"] = rate(samples, responses, config=config, store=store, run_id=f"{run_id}-judge")
        judge = summarize_judge(ratings, config)
        timings["judge_s"] = time.perf_counter() - phase

    evaluation_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{run_id[:6]}"
    uri = f"{evaluation_home(config)}/evaluations/{evaluation_id}"
    test_set = config.test_set or config.dataset
    report = markdown(test_set=test_set, metrics=metrics, judge=judge,
                      notes=notes(config, version, split, samples, trained))
    artifacts = {"samples.parquet": _parquet(samples), "responses.parquet": _parquet(responses),
                 "metrics.json": _json({"models": metrics, "judge": judge}), "report.md": report.encode(),
                 "metrics.png": plot(test_set=test_set, metrics=metrics, judge=judge)}
    if ratings is not None:
        artifacts["ratings.parquet"] = _parquet(ratings)
    timings["total_s"] = time.perf_counter() - started
    manifest = {"format": EVALUATION_FORMAT, "evaluation_id": evaluation_id, "run_id": run_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dataset": config.dataset,
                "version": version.manifest.version, "config": config.model_dump(mode="json"),
                "config_hash": config_hash(config), "split": split.description, "samples": samples.num_rows,
                "trained_prompts": trained,
                "metrics": metrics, "judge": judge, "usage": usage, "timings_s": timings,
                "artifacts": {name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                              for name, content in artifacts.items()}}
    for name, content in artifacts.items():
        write(f"{uri}/{name}", content, config.s3)
    write(f"{uri}/{MANIFEST}", _json(manifest), config.s3)  # last: its existence means the folder is whole
    return EvaluationResult(uri=uri, evaluation_id=evaluation_id, samples=samples.num_rows, metrics=metrics,
                            judge=judge, usage=usage, report=report)


def resolve_checkpoint(checkpoint: str, config: EvaluateConfig) -> str:
    """`finetune:<run>` (or `finetune:latest`, the newest finished run of the dataset) is that fine-tuning
    run's exported model; `finetune:<run>:initial` the weights it started from, so one evaluation can
    set a model beside itself before fine-tuning. Anything else is a folder path, returned as it is."""
    if not checkpoint.startswith("finetune:"):
        return checkpoint
    from soulray.train.storage import read_json

    paths, initial = _finetune_run(checkpoint, config)
    return read_json(f"{paths.prepared}/prepared.json", config.s3)["model_uri"] if initial else paths.model


def trained_samples(checkpoint: str, config: EvaluateConfig) -> dict[str, Any] | None:
    """The samples settings (format, max_input_tokens, …) a checkpoint was fine-tuned with, so it is
    prompted as it was trained: a fine-tuning run's, before and after (`finetune:` references), or a
    soulray export's training.json; None for any other model (prompted by its own tokenizer)."""
    from soulray.train.storage import exists, read_json

    if checkpoint.startswith("finetune:"):
        paths, _ = _finetune_run(checkpoint, config)
        return read_json(f"{paths.prepared}/prepared.json", config.s3)["samples"]
    facts = f"{checkpoint.rstrip('/')}/training.json"
    return read_json(facts, config.s3).get("samples") if exists(facts, config.s3) else None


def _finetune_run(checkpoint: str, config: EvaluateConfig) -> tuple[Any, bool]:
    """(the finished run a `finetune:<run>[:initial]` reference names, whether it asks for the initial weights)."""
    from soulray.train.storage import RunPaths, exists

    name, _, which = checkpoint.removeprefix("finetune:").partition(":")
    if which not in ("", "initial"):
        raise SoulrayError(f"checkpoint {checkpoint!r}: expected finetune:<run>[:initial]")
    if name == "latest":
        name = _latest_finetune_run(config)
    paths = RunPaths.for_run(root=config.root, dataset=config.dataset, run_name=name)
    if not exists(f"{paths.model}/training.json", config.s3):
        raise SoulrayError(f"checkpoint {checkpoint!r}: {paths.model} holds no finished fine-tuning export")
    return paths, which == "initial"


def _latest_finetune_run(config: EvaluateConfig) -> str:
    import pyarrow.fs as pafs

    from soulray.fs import resolve

    runs = resolve(f"{config.root.rstrip('/')}/{config.dataset}/finetune", config.s3)
    finished = []
    for info in runs.filesystem.get_file_info(pafs.FileSelector(runs.path, allow_not_found=True)):
        done = runs.filesystem.get_file_info(f"{info.path}/model/training.json")
        if info.type == pafs.FileType.Directory and done.type == pafs.FileType.File:
            finished.append((done.mtime, info.base_name))
    if not finished:
        raise SoulrayError(f"{runs.uri}: no finished fine-tuning run (run `soulray finetune` first)")
    return max(finished)[1]


def choose_split(config: EvaluateConfig) -> Split:
    """The held-out side: an explicit split file, else the split.json beside the first checkpoint that
    has one (the questions its fine-tuning run never trained on), else the fine-tuning job's hash rule."""
    from soulray.train.storage import exists, read_json

    candidates = [config.split.split_file] if config.split.split_file else [
        f"{model.checkpoint.rstrip('/')}/split.json" for model in config.models if model.checkpoint]
    for path in candidates:
        if config.split.split_file or exists(path, config.s3):
            try:
                split = read_json(path, config.s3)
            except (OSError, json.JSONDecodeError) as exc:
                raise SoulrayError(f"split file {path}: cannot be read as JSON: {exc}") from None
            description = {"source": path, "seed": split.get("seed"), "validation_share": split.get("validation_share"),
                           "questions": len(split["validation"]["question_ids"]),
                           "split_of_version": (split.get("source") or {}).get("version")}
            return Split(listed_split(split), description)
    description = {"source": "hash rule", "seed": config.split.seed, "validation_share": config.split.validation_share}
    return Split(hash_split(validation_share=config.split.validation_share, seed=config.split.seed), description)


def generate(model: EvalModel, samples: pa.Table, *, config: EvaluateConfig, store: VersionStore,
             run_id: str, trained: dict[str, Any] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Every sample's response from `model` (EVAL_RESPONSE rows, in sample order) and what it used;
    `trained`: a checkpoint's fine-tuning samples settings (trained_samples)."""
    if model.checkpoint:
        table = _from_checkpoint(model, samples, config, trained)
        used = {"tokens": {"prompt": _sum(table, "prompt_tokens"), "completion": _sum(table, "completion_tokens")},
                "cost_usd": 0.0}
    else:
        table, used = _from_endpoint(model, samples, config=config, store=store, run_id=run_id)
    # every sample back exactly once, whatever the actors did: checked, then put in sample order
    position = {sample_id: index for index, sample_id in enumerate(samples["sample_id"].to_pylist())}
    returned = table["sample_id"].to_pylist()
    if len(returned) != len(position) or set(returned) != set(position):
        raise RuntimeError(f"{model.name}: {len(returned)} responses ({len(set(returned))} distinct) "
                           f"for {len(position)} samples")
    return table.take(sorted(range(len(returned)), key=lambda row: position[returned[row]])), used


def _from_checkpoint(model: EvalModel, samples: pa.Table, config: EvaluateConfig,
                     trained: dict[str, Any] | None) -> pa.Table:
    import ray.data

    from soulray.evaluate.generate import CheckpointGenerator, threads_for

    generation = config.generation
    # prompts of similar length share a batch (less padding); each sample's draw depends on its own
    # seed only, so the grouping changes no text
    lengths = [sum(len(message["content"]) for message in history) for history in samples["history"].to_pylist()]
    by_length = samples.take(sorted(range(samples.num_rows), key=lengths.__getitem__))
    dataset = _blocks(by_length.select(["sample_id", "history"]), generation.batch_size)
    output = dataset.map_batches(
        CheckpointGenerator, batch_size=generation.batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"model_name": model.name, "checkpoint": model.checkpoint, "decoding": config.decoding,
                               "s3": config.s3, "device": generation.device, "dtype": generation.dtype,
                               "threads": threads_for(generation.actor_num_cpus), "trained": trained},
        compute=ray.data.ActorPoolStrategy(size=min(generation.actors, dataset.num_blocks())),
        num_cpus=generation.actor_num_cpus, num_gpus=generation.actor_num_gpus or None)
    return _collect(output, EVAL_RESPONSE)


def _from_endpoint(model: EvalModel, samples: pa.Table, *, config: EvaluateConfig, store: VersionStore,
                   run_id: str) -> tuple[pa.Table, dict[str, Any]]:
    import ray.data

    from soulray.evaluate.llm import EndpointGenerator, api_config, next_turn_namespace
    from soulray.llm.session import LLMSession

    decoding, api = config.decoding, config.api
    rewrite = api_config(api, model=model.endpoint_model, temperature=decoding.temperature, top_p=decoding.top_p,
                         max_tokens=decoding.max_new_tokens)
    namespace = next_turn_namespace(decoding.seed)
    with LLMSession(rewrite, run_id=run_id, store=store, s3=config.s3, namespace=namespace) as session:
        output = _blocks(samples.select(["sample_id", "history", "reference"]), api.batch_size).map_batches(
            EndpointGenerator, batch_size=api.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"config": rewrite, "run": session.run, "namespace": namespace,
                                   "model_name": model.name, "system_prompt": model.system_prompt},
            compute=ray.data.ActorPoolStrategy(size=api.actors), num_cpus=api.actor_num_cpus)
        table = _collect(output, EVAL_RESPONSE)
        return table, session.usage()


def rate(samples: pa.Table, responses: pa.Table, *, config: EvaluateConfig, store: VersionStore,
         run_id: str) -> tuple[pa.Table, dict[str, Any]]:
    """The judge's ratings (JUDGE_SCORE rows, one per rated response and judge run) and what it used.
    Every model is rated on the same first `judge.samples` samples; failed generations are not rated."""
    import ray.data

    from soulray.evaluate.llm import Judge, api_config
    from soulray.llm.session import LLMSession

    judge, api = config.judge, config.api
    chosen = samples.slice(0, judge.samples) if judge.samples else samples
    history = dict(zip(chosen["sample_id"].to_pylist(), chosen["history"].to_pylist(), strict=True))
    items = [{"sample_id": row["sample_id"], "model": row["model"], "history": history[row["sample_id"]],
              "response": row["response"]} for row in responses.to_pylist()
             if row["sample_id"] in history and row["error"] is None]
    rewrite = api_config(api, model=judge.model, temperature=judge.temperature, top_p=None, max_tokens=judge.max_tokens)
    with LLMSession(rewrite, run_id=run_id, store=store, s3=config.s3,
                        namespace=load_rubric_version(judge.rubric)) as session:
        output = _blocks(pa.Table.from_pylist(items), api.batch_size).map_batches(
            Judge, batch_size=api.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"config": rewrite, "run": session.run, "rubric": judge.rubric, "runs": judge.runs,
                                   "max_reasks": judge.max_reasks},
            compute=ray.data.ActorPoolStrategy(size=api.actors), num_cpus=api.actor_num_cpus)
        table = _collect(output, JUDGE_SCORE)
        return table.sort_by([("model", "ascending"), ("sample_id", "ascending"), ("run", "ascending")]), session.usage()


def load_rubric_version(rubric: str) -> str:
    from soulray.evaluate.judge import load_rubric

    return load_rubric(rubric).version


def model_metrics(samples: pa.Table, responses: pa.Table, model: str) -> dict[str, float]:
    """The paper's metrics of one model; a failed generation counts as an empty response (it scores 0)
    and is counted, so a flaky endpoint cannot look better by answering less."""
    rows = {row["sample_id"]: row for row in responses.to_pylist() if row["model"] == model}
    ordered = [rows[sample_id] for sample_id in samples["sample_id"].to_pylist()]
    result = score([row["response"] or "" for row in ordered], samples["reference"].to_pylist())
    result["failed"] = sum(row["error"] is not None for row in ordered)
    return result


def summarize_judge(ratings: pa.Table, config: EvaluateConfig) -> dict[str, Any]:
    judge = config.judge
    rows = ratings.to_pylist()
    models = {}
    for model in config.models:
        mine = [row for row in rows if row["model"] == model.name]
        models[model.name] = {name: mean_with_interval(mine, name, confidence=judge.confidence,
                                                       resamples=judge.bootstrap_resamples, seed=config.decoding.seed)
                              for name in DIMENSIONS}
    return {"judge_model": judge.model, "rubric_version": load_rubric_version(judge.rubric), "runs": judge.runs,
            "samples": judge.samples, "confidence": judge.confidence, "ratings": len(rows),
            "unrated": sum(row["error"] is not None for row in rows), "models": models,
            "agreement": {name: agreement(rows, name) for name in DIMENSIONS},
            "cost_usd": sum(row["cost_usd"] for row in rows)}


def notes(config: EvaluateConfig, version: Any, split: Split, samples: pa.Table,
          trained: dict[str, dict[str, Any] | None]) -> list[str]:
    decoding = config.decoding
    lines = [
        f"{samples.num_rows} next-counselor-turn samples from the held-out dialogues of {config.dataset} "
        f"{version.manifest.version} (split: {json.dumps(split.description, ensure_ascii=False)}; "
        f"sample choice seed {config.split.seed}).",
        f"Decoding: top-p {decoding.top_p}, temperature {decoding.temperature}, at most {decoding.max_new_tokens} new "
        f"tokens, seed {decoding.seed} (the paper: 0.75, 0.95, 512).",
        "BLEU-n: nltk sentence_bleu on characters (whitespace removed), uniform weights over 1..n-grams, "
        "smoothing method3, averaged over samples; ROUGE: rouge_chinese F-scores on jieba words, averaged; ×100.",
        "Failed generations count as empty responses (score 0); see `failed`.",
    ]
    if trained:
        lines.append("Checkpoint prompts are token ids from the fine-tuning code, as each model was trained: " + "; ".join(
            f"{name} {facts['format']}, last {min(decoding.max_input_tokens, facts['max_input_tokens'])} tokens"
            if facts else f"{name} its own chat template (or the paper's format), last {decoding.max_input_tokens} tokens"
            for name, facts in trained.items()) + ".")
    if config.judge.enabled and config.api.base_url == "local":
        lines.append("The judge ran against the embedded offline server: its ratings are lexical cues for "
                     "plumbing and tests, not a model's judgement.")
    return lines


def evaluation_home(config: EvaluateConfig) -> str:
    """The folder of the first model's fine-tuning run when it is one (its model/ holds training.json),
    so the evaluation sits beside the training metrics; else the dataset's folder."""
    from soulray.train.storage import exists

    first = config.models[0]
    if first.checkpoint and first.checkpoint.rstrip("/").endswith("/model") and \
            exists(f"{first.checkpoint.rstrip('/')}/training.json", config.s3):
        return first.checkpoint.rstrip("/").rsplit("/", 1)[0]
    return f"{config.root.rstrip('/')}/{config.dataset}"


def write(uri: str, content: bytes, s3: S3Config) -> None:
    from soulray.fs import resolve
    from soulray.store.shards import upload

    location = resolve(uri, s3)
    if not location.is_s3:
        location.filesystem.create_dir(location.path.rsplit("/", 1)[0], recursive=True)
    upload(location, pa.py_buffer(content))


def summary(result: EvaluationResult) -> str:
    """What a person wants to see at the end of a run."""
    lines = [f"evaluation {result.evaluation_id}: {result.samples} held-out samples", f"  at      {result.uri}"]
    for model, scores in result.metrics.items():
        lines.append(f"  {model}: B-1 {scores['bleu-1']:.2f}  B-4 {scores['bleu-4']:.2f}  R-1 {scores['rouge-1']:.2f}  "
                     f"R-L {scores['rouge-l']:.2f}  distinct-2 {scores['distinct-2']:.2f}  "
                     f"length {scores['avg-length']:.0f}  failed {scores['failed']}")
    if result.judge:
        for model, dimensions in result.judge["models"].items():
            lines.append(f"  judge {model}: " + "  ".join(f"{name} {d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"
                                                          for name, d in dimensions.items()))
    spent = sum(used.get("cost_usd", 0.0) for used in result.usage.values())
    lines.append(f"  spend   ${spent:.4f} (endpoint models and judge, list prices)")
    return "\n".join(lines)


def _blocks(table: pa.Table, rows: int):
    """A Ray Dataset of `table` in blocks of `rows`, so every actor of a pool gets work."""
    import ray.data

    return ray.data.from_arrow([table.slice(start, rows) for start in range(0, max(table.num_rows, 1), rows)])


def _collect(dataset, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [table for table in ray.get(list(dataset.to_arrow_refs())) if table.num_rows]
    return pa.concat_tables([table.select(schema.names).cast(schema) for table in tables]) if tables else schema.empty_table()


def _sum(table: pa.Table, column: str) -> int:
    return int(sum(value or 0 for value in table[column].to_pylist()))


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _json(value: Any) -> bytes:
    return json.dumps(_finite(value), ensure_ascii=False, indent=2, allow_nan=False).encode()


def _finite(value: Any) -> Any:
    """NaN (a mean of no ratings, κ of one run) as null: strict JSON readers reject NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
