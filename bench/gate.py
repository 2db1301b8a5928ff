"""Persona conditioning and the quality gate on the real SMILECHAT sample (2,000 Q&A rows, CC0) through
the embedded offline server: what the gate costs and lets through, and how well the judge agrees with
itself. The offline server is no model: its ratings come from lexical cues and its revisions fix only
what words can (soulray/offline/gate.py), so these figures measure the plumbing (calls, cost shares,
the gate's paths), not the quality of any model.

Four regenerate runs, versions of one dataset (so the response cache carries over):
  plain    no persona, no gate                    → calls per published dialogue without the gate
  gated    persona (profile call) + gate          → calls per published dialogue, cost share per kind,
                                                     pass rate, scores before / after
  rater-0  gate as a pure rater (threshold 0, no revision), judge_run 0: the gated run's first ratings,
           all from the cache
  rater-1  the same with judge_run 1: a second, independent judge run → Fleiss' κ per dimension
           (soulray/evaluate/judge.py's fleiss_kappa, as for the evaluation's judge)

    python bench/gate.py                  # the whole sample (~9 min on 2 busy cores)
    python bench/gate.py --limit 200      # a smoke run

`--compare` instead compares two published versions rated by the gate (the README's "Comparing judged
quality with and without persona"): per dimension, the mean paired difference (second − first) over
the dialogues both rated, with a 95% bootstrap interval (soulray/evaluate/judge.py's mean_with_interval).

    python bench/gate.py --compare ROOT DATASET plain persona
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "smilechat-sample"
DIMENSIONS = ("empathy", "helpfulness", "safety", "faithfulness", "naturalness")
PERSONA = ["rewrite.persona.enabled=true", "rewrite.prompt=soulchat-persona-v1"]
RATER = [*PERSONA, "quality_gate.enabled=true", "quality_gate.threshold=0", "quality_gate.min_score=0",
         "quality_gate.revise=false"]
RUNS = {"plain": [], "gated": [*PERSONA, "quality_gate.enabled=true"],
        "rater-0": [*RATER, "quality_gate.judge_run=0"], "rater-1": [*RATER, "quality_gate.judge_run=1"]}


def regenerate(root: Path, name: str, overrides: list[str], limit: int | None) -> dict[str, Any]:
    from soulray.cli import DEMO_CONFIG
    from soulray.config import RegenerateConfig, load_config
    from soulray.regenerate import run
    from soulray.store import open_version

    config = load_config(RegenerateConfig, DEMO_CONFIG, [
        f"storage.root={root}", f"sources=[{{path: {SAMPLE / 'qa.parquet'}}}]", "dataset=gate-bench",
        "dedup.source.enabled=false", "dedup.dialogue.enabled=false",  # not the subject; the filters stay
        "rewrite.actors=2", "rewrite.batch_size=32", "ray.num_cpus=4",
        *([f"limit={limit}"] if limit else []), *overrides])
    started = time.perf_counter()
    manifest = run(config).manifest
    data = open_version(manifest.version, root=str(root), dataset="gate-bench").to_table().select(
        ["record_id", "gate"]).to_pylist()
    gate = manifest.stages["quality_gate"].gate if "quality_gate" in manifest.stages else None
    return {"wall_s": time.perf_counter() - started, "counts": manifest.counts.model_dump(),
            "kinds": manifest.usage.model_dump()["kinds"], "cost_usd": manifest.cost_usd,
            "gate": {**gate.model_dump(), "pass_rate": gate.pass_rate} if gate else None,
            "ratings": {row["record_id"]: row["gate"] for row in data if row["gate"]}}


def calls(result: dict[str, Any], *, paid_only: bool = False) -> float:
    fields = ("paid",) if paid_only else ("paid", "cached")
    return sum(stats[field] for stats in result["kinds"].values() for field in fields)


def agreement(first: dict[str, Any], second: dict[str, Any]) -> dict[str, dict[str, float]]:
    from soulray.evaluate.judge import fleiss_kappa

    common = sorted(set(first) & set(second))
    out = {}
    for dimension in (*DIMENSIONS, "total"):
        pairs = [[first[key][dimension], second[key][dimension]] for key in common]
        categories = 11 if dimension == "total" else 3
        out[dimension] = {"fleiss_kappa": fleiss_kappa(pairs, categories=categories),
                          "exact": sum(a == b for a, b in pairs) / len(pairs), "items": len(pairs)}
    return out


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    plain, gated = results["plain"], results["gated"]
    total_cost = sum(stats["cost_usd"] for stats in gated["kinds"].values())
    published = {name: result["counts"]["output_rows"] for name, result in results.items()}
    gate = gated["gate"]
    return {
        "published": published,
        "calls_per_published": {"plain": calls(plain) / published["plain"], "gated": calls(gated) / published["gated"]},
        "cost_per_published_usd": {"plain": plain["cost_usd"] / published["plain"],
                                   "gated": gated["cost_usd"] / published["gated"]},
        "gate_cost_per_published_usd": sum(gated["kinds"].get(kind, {}).get("cost_usd", 0.0)
                                           for kind in ("judge", "revision")) / published["gated"],
        "cost_share": {kind: stats["cost_usd"] / total_cost for kind, stats in gated["kinds"].items()},
        "calls_by_kind": {kind: stats["paid"] + stats["cached"] for kind, stats in gated["kinds"].items()},
        "gate": {key: gate[key] for key in ("judged", "passed", "revised_passed", "rejected", "pass_rate")},
        "means": {when: {dimension: _mean(gate[when].get(dimension, {})) for dimension in (*DIMENSIONS, "total")}
                  for when in ("before", "after")},
        "rater_runs_paid_calls": {name: calls(results[name], paid_only=True) for name in ("rater-0", "rater-1")},
        "agreement": agreement(results["rater-0"]["ratings"], results["rater-1"]["ratings"]),
        "wall_s": {name: round(result["wall_s"], 1) for name, result in results.items()},
    }


def _mean(histogram: dict[str, int]) -> float:
    total = sum(histogram.values())
    return sum(int(score) * n for score, n in histogram.items()) / total if total else float("nan")


def compare(root: str, dataset: str, first: str, second: str) -> dict[str, dict[str, float]]:
    from soulray.evaluate.judge import mean_with_interval
    from soulray.store import open_version

    ratings = [{row["record_id"]: row["gate"] for row in open_version(version, root=root, dataset=dataset)
                .to_table().select(["record_id", "gate"]).to_pylist() if row["gate"]} for version in (first, second)]
    common = sorted(set(ratings[0]) & set(ratings[1]))
    rows = [{"sample_id": key, **{name: ratings[1][key][name] - ratings[0][key][name] for name in (*DIMENSIONS, "total")}}
            for key in common]
    return {name: mean_with_interval(rows, name, confidence=0.95, resamples=2000, seed=0)
            for name in (*DIMENSIONS, "total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="rows of the sample (default all 2,000)")
    parser.add_argument("--workdir", type=Path, default=None, help="storage root (default a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    parser.add_argument("--compare", nargs=4, metavar=("ROOT", "DATASET", "FIRST", "SECOND"),
                        help="compare the gate's ratings of two published versions instead of benchmarking")
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare), indent=2))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="soulray-gate-"))
    results = {}
    for name, overrides in RUNS.items():
        results[name] = regenerate(root, name, overrides, args.limit)
        print(f"{name}: {results[name]['counts']} in {results[name]['wall_s']:.0f}s", flush=True)
    figures = summarise(results)
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
