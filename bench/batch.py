"""Batch mode benchmark (issue 20): the regenerate job with rewrite.mode batch on synthetic PsyQA-shaped rows
against the local server's Batch API, whose clock runs 2,880× (a 24 h window in 30 s, a batch's 2 h in
2.5 s), with two keys.

- clean: every batch completes; the keys' default queue limit (2M prompt tokens each).
- hostile: the second batch expires half done, 2% of the lines fail (5xx) and 5% of the answers are
  malformed (re-asked in later batches), a queue limit of 900k prompt tokens a key (the job needs ~6M),
  files of ≤ 1,000 requests, and the job is SIGKILLed once it has collected its first batch, then run again.

Reported from the server's own records: calls paid, calls paid twice, batches, the highest queue per key
against its limit, refused submissions; from the cache: the price paid against the online price of the
same tokens; from the manifest: every row accounted.

    python bench/batch.py --quick          # 2,000 rows
    python bench/batch.py                  # 10,000 rows
    python bench/run.py --only batch       # the same, inside the project's benchmark report
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.llm.pricing import cost_of  # noqa: E402
from soulray.offline.batches import BatchSettings  # noqa: E402
from soulray.offline.server import Faults, LocalLLMServer, ServerConfig, SimulatedKey  # noqa: E402
from soulray.rewrite.prompts import load_template  # noqa: E402
from soulray.rewrite.settings import RewriteConfig  # noqa: E402
from soulray.sources.synthetic import write_synthetic  # noqa: E402
from soulray.store import VersionStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("BENCH_KEY_A", "BENCH_KEY_B")
TIME_SCALE = 86_400 / 30  # 24 h in 30 s
LATENCY_S = 7_200.0  # simulated: a batch takes 2 h (2.5 s here)
HOSTILE_QUEUE = 900_000  # prompt tokens a key may have enqueued per model (~1,500 of these requests)
HOSTILE_FILE = 1_000  # requests per input file
NAMESPACE = load_template("soulchat-v1").version


def run(workdir: Path, quick: bool) -> dict:
    for index, name in enumerate(KEYS):
        os.environ.setdefault(name, f"sk-bench-{index}-{uuid.uuid4().hex}")
    rows = 2_000 if quick else 10_000
    source = workdir / f"batch-source-{rows}.parquet"
    write_synthetic(source, rows, seed=5, chunk_rows=min(rows, 50_000))
    import ray

    for attempt in range(3):  # Ray gives its raylet 30 s to start: not always enough on a shared 2-core machine
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        address = ray.get_runtime_context().gcs_address
        return {"rows": rows, "time_scale": TIME_SCALE, "batch_latency_s": LATENCY_S,
                "clean": scenario(workdir, source, rows, address, hostile=False),
                "hostile": scenario(workdir, source, rows, address, hostile=True)}
    finally:
        ray.shutdown()


def scenario(workdir: Path, source: Path, rows: int, address: str, *, hostile: bool) -> dict:
    settings = BatchSettings(time_scale=TIME_SCALE, latency_s=LATENCY_S,
                             queue_tokens=HOSTILE_QUEUE if hostile else None, expire=(2,) if hostile else ())
    faults = Faults(error_5xx=0.02, malformed=0.05) if hostile else Faults()
    server = LocalLLMServer(ServerConfig(keys={os.environ[name]: SimulatedKey() for name in KEYS}, batch=settings,
                                         faults=faults, seed=7))
    url = server.start()
    root = workdir / f"batch-{'hostile' if hostile else 'clean'}-{uuid.uuid4().hex[:6]}"
    queue = HOSTILE_QUEUE if hostile else RewriteConfig().keys[0].batch_queue_tokens
    keys = [{"name": name.lower(), "api_key_env": name, "batch_queue_tokens": queue} for name in KEYS]
    command = [sys.executable, str(ROOT / "jobs" / "regenerate.py"), "--config", "soulray/configs/demo.yaml",
               "--set", f"sources=[{{path: {source}, columns: {{description: description, topic: topic}}}}]",
               "--set", f"storage.root={root}", "--set", f"rewrite.base_url={url}",
               "--set", f"rewrite.keys={json.dumps(keys)}", "--set", "rewrite.mode=batch",
               "--set", "rewrite.batch.poll_s=0.5", "--set", "rewrite.batch.poll_max_s=2",
               "--set", "rewrite.max_failure_share=1", "--set", "storage.rows_per_shard=20000",
               *(["--set", f"rewrite.batch.max_requests_per_file={HOSTILE_FILE}"] if hostile else [])]
    env = {**os.environ, "RAY_ADDRESS": address}
    started = time.perf_counter()
    killed_after_s = None
    if hostile:
        job = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        while not collected(root) and job.poll() is None:  # killed once it has collected a batch, mid-run
            time.sleep(0.05)
        if job.poll() is not None:
            raise RuntimeError(f"batch bench: the job ended before the kill:\n{job.stderr.read()[-3000:]}")
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        killed_after_s = time.perf_counter() - started
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    server.stop()
    if finished.returncode != 0:
        raise RuntimeError(f"batch bench: the job failed:\n{finished.stderr[-3000:]}")
    return figures(server, root, wall=wall, killed_after_s=killed_after_s, queue=queue)


def collected(root: Path) -> bool:
    """Whether the job has collected a batch (its journal holds a done entry)."""
    return any('"state": "done"' in path.read_text() for path in root.glob("smilechat-demo/cache/batches/*/*.json"))


def figures(server: LocalLLMServer, root: Path, *, wall: float, killed_after_s: float | None, queue: int) -> dict:
    store = VersionStore(str(root), "smilechat-demo")
    manifest = store.manifest("latest")
    counts = manifest.counts
    entries = [row for path in Path(store.cache_uri(), NAMESPACE).glob("*.parquet") for row in pq.read_table(path).to_pylist()]
    config = RewriteConfig()
    online = sum(cost_of(config.prices, e["model"], e["prompt_tokens"], e["completion_tokens"]) for e in entries)
    paid = sum(e["cost_usd"] for e in entries)
    stats = server.batches.summary()
    batches = list(server.batches.batches.values())
    statuses: dict[str, int] = {}
    for batch in batches:
        status = server.batches._status(batch)
        statuses[status] = statuses.get(status, 0) + 1
    refused: dict[str, int] = {}
    for key in stats.values():
        for code, count in key["failed_validation"].items():
            refused[code] = refused.get(code, 0) + count
    return {
        "wall_s": wall, "killed_after_s": killed_after_s,
        "input_rows": counts.input_rows, "output_rows": counts.output_rows, "rejected_rows": counts.rejected_rows,
        "accounted": counts.input_rows == counts.output_rows + counts.rejected_rows,
        "rejects": counts.by_stage,
        "calls_paid": sum(key["lines_answered"] for key in stats.values()),
        "calls_paid_twice": sum(1 for n in server.batches.paid.values() if n > 1),
        "answers_cached": len({e["call_key"] for e in entries}),
        "lines_failed": dict(sum((Counter(key["lines_failed"]) for key in stats.values()), Counter())),
        "batch_phase_s": manifest.usage.batches.wall_s,
        "batches": len(batches), "statuses": statuses, "refused_submissions": refused,
        "batches_per_input_file_max": max(
            (sum(b.input_file_id == f for b in batches) for f in {b.input_file_id for b in batches}), default=0),
        "queue_limit": queue, "max_queue": {label: key["max_queue"] for label, key in stats.items()},
        "largest_file": {label: key["largest_file"] for label, key in stats.items()},
        "cost_usd": paid, "online_cost_usd": online, "price_ratio": paid / online if online else None,
        "manifest_cost_usd": manifest.cost_usd,  # the last run's: a killed run's collected batches are not in it
    }


def markdown(result: dict) -> str:
    lines = [f"Batch mode (issue 20): the regenerate job on {result['rows']:,} synthetic rows, rewrite.mode batch, two "
             f"keys, local server clock ×{result['time_scale']:.0f} (a batch's {result['batch_latency_s'] / 3600:.0f} h "
             f"= {result['batch_latency_s'] / result['time_scale']:.1f} s, 24 h = {86_400 / result['time_scale']:.0f} s)",
             "", "| run | wall (batch phase) | rows in = out + rejected | calls paid | paid twice | batches (statuses) | "
             "refused | failed lines | highest queue / limit | price vs online |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("clean", "hostile"):
        r = result[name]
        queue = max(max(lanes.values(), default=0) for lanes in r["max_queue"].values())
        kill = f" (killed at {r['killed_after_s']:.0f} s, rerun)" if r["killed_after_s"] else ""
        phase = f" ({r['batch_phase_s']:.0f} s)" if r.get("batch_phase_s") else ""
        lines.append(f"| {name}{kill} | {r['wall_s']:.0f} s{phase} | {r['input_rows']} = {r['output_rows']} + "
                     f"{r['rejected_rows']} ({'ok' if r['accounted'] else 'MISMATCH'}) | {r['calls_paid']} "
                     f"({r['answers_cached']} in the cache) | {r['calls_paid_twice']} | {r['batches']} "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(r['statuses'].items()))}) | "
                     f"{sum(r['refused_submissions'].values())} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['lines_failed'].items())) or '0'} | "
                     f"{queue:,} / {r['queue_limit']:,} | "
                     f"{r['price_ratio']:.3f}× (${r['cost_usd']:.2f} vs ${r['online_cost_usd']:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 10,000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(Path(workdir), args.quick)
    print(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
