"""End to end: the regenerate job (`python jobs/regenerate.py`, every stage on, a local Ray of its own)
over synthetic PsyQA-shaped sources of growing size, through `soulray serve-llm` at zero latency.

Per size: wall time of the whole command, rows/s, and the peak memory of the job's process tree
(driver, Ray's daemons and workers: PSS, so shared object-store pages are split between the processes
that map them rather than counted in each; sampled every second, so a shorter spike can be missed; the sampling costs ~10% of one core). The figure that
tells how cost grows is rows/s at each size relative to rows/s at the smallest size in the same run
(1.00 = linear time).

    python bench/e2e.py                                 # 10k, 100k and 1M, what `make bench` runs (~56 min on 2 cores)
    python bench/e2e.py --sizes 10000 100000            # the first two (~7 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soulray.sources.synthetic import write_synthetic  # noqa: E402
from soulray.store import VersionStore  # noqa: E402

FULL_SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (2_000, 10_000)


def run(workdir: Path, quick: bool, sizes: tuple[int, ...] | None = None) -> dict:
    from run import free_port, wait_for  # bench/run.py, beside this script

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "soulray", "serve-llm", "--port", str(port), "--rpm", "10000000",
                               "--tpm", "10000000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port)
        points = [_one_size(workdir, size, f"http://127.0.0.1:{port}/v1")
                  for size in (sizes or (QUICK_SIZES if quick else FULL_SIZES))]
    finally:
        server.terminate()
    base = points[0]["rows_per_s"]
    for previous, point in zip([None, *points[:-1]], points, strict=True):
        point["rate_vs_smallest"] = point["rows_per_s"] / base
        # the per-row cost with the fixed start-up (Ray, actors, imports) taken out
        point["marginal_rows_per_s"] = ((point["rows"] - previous["rows"]) / max(point["wall_s"] - previous["wall_s"], 1e-9)
                                        if previous else None)
    return {"points": points}


def _one_size(workdir: Path, rows: int, url: str) -> dict:
    source = workdir / f"e2e-{rows}.parquet"
    write_synthetic(source, rows, seed=11, chunk_rows=min(rows, 50_000))
    root = workdir / f"e2e-out-{rows}"
    command = [sys.executable, str(ROOT / "jobs" / "regenerate.py"), "--config", "soulray/configs/demo.yaml",
               "--set", f"sources=[{{path: {source}, columns: {{description: description, topic: topic}}}}]",
               "--set", f"storage.root={root}", "--set", f"rewrite.base_url={url}", "--set", "storage.rows_per_shard=20000",
               "--set", "rewrite.concurrency_per_actor=32"]
    started, load = time.perf_counter(), os.getloadavg()[0]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while job.poll() is None:
        peak = max(peak, _tree_pss(job.pid))
        time.sleep(1.0)
    wall = time.perf_counter() - started
    output, errors = job.communicate()
    if job.returncode != 0:
        raise RuntimeError(f"e2e {rows}: the job failed:\n{errors[-3000:]}")
    manifest = VersionStore(str(root), "smilechat-demo").manifest("latest")
    counts = manifest.counts
    if counts.output_rows + counts.rejected_rows != rows:
        raise RuntimeError(f"e2e {rows}: {counts['output_rows']} published + {counts['rejected_rows']} rejected")
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "peak_pss_mb": peak / 1e6,
            "output_rows": counts.output_rows, "rejected_rows": counts.rejected_rows,
            "by_stage": counts.by_stage,
            # dedup phase times as before (…_identify_s), from the stage reports where they now live
            "timings_s": {**manifest.timings_s, **{f"{name}_{phase}_s": seconds for name, report in manifest.stages.items()
                                                   for phase, seconds in report.seconds.items()}}, "load_before": load,
            "load_after": os.getloadavg()[0]}


def _tree_pss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def markdown(result: dict) -> str:
    lines = ["| regenerate job, end to end (zero-latency local LLM) | wall | rows/s | rate vs smallest | marginal rows/s "
             "| peak PSS (tree) | published + rejected |", "|---|---|---|---|---|---|---|"]
    for point in result["points"]:
        marginal = f"{point['marginal_rows_per_s']:.0f}" if point["marginal_rows_per_s"] else "–"
        lines.append(f"| {point['rows']:,} rows | {point['wall_s']:.0f} s | {point['rows_per_s']:.0f} | "
                     f"{point['rate_vs_smallest']:.2f}× | {marginal} | {point.get('peak_pss_mb', point.get('peak_rss_mb', 0)):,.0f} MB | "
                     f"{point['output_rows']:,} + {point['rejected_rows']:,} |")
    if all("timings_s" in point for point in result["points"]):
        lines += ["", "Where the time went (the job's own phase timings, s). Ray Data streams, so each dedup's first "
                  "phase (identify) runs everything upstream of it: source dedup's identify = read + source "
                  "filters; dialogue dedup's identify = the rewrite + parse + dialogue filters; publish = writing "
                  "the shards after the dialogue dedup.", "",
                  "| rows | source: read + filters | source dedup, rest | rewrite + dialogue filters | dialogue dedup, rest "
                  "| publish | whole job | load average before → after |", "|---|---|---|---|---|---|---|---|"]
        for point in result["points"]:
            times = point["timings_s"]

            def phases(stage: str, first: bool, times: dict = times) -> float:
                return sum(value for key, value in times.items()
                           if key.startswith(f"{stage}_") and key.endswith("_s") and (key == f"{stage}_identify_s") == first)

            lines.append(f"| {point['rows']:,} | {phases('dedup_source', True):.0f} | {phases('dedup_source', False):.0f} | "
                         f"{phases('dedup_dialogue', True):.0f} | {phases('dedup_dialogue', False):.0f} | "
                         f"{times.get('pipeline_s', 0):.0f} | {times.get('total_s', 0):.0f} | "
                         f"{point['load_before']:.1f} → {point['load_after']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FULL_SIZES))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(Path(workdir), False, tuple(args.sizes))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
