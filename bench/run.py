"""soulray benchmarks: every figure is a ratio against a baseline measured in the same run.

    python bench/run.py --out bench/results            # full (make bench)
    python bench/run.py --quick --out bench/results    # a few minutes (make bench-quick)

Writes <out>/latest.md and <out>/latest.json with the machine's description. These machines are
shared and noisy: each side is run `repeats` times, interleaved, and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.config import (
    S3Config,  # noqa: E402
    SourceSpec,  # noqa: E402
)
from soulray.fs import boto3_client, resolve  # noqa: E402
from soulray.schema import UNIT  # noqa: E402
from soulray.sources import normalise_fragment, plan_fragments  # noqa: E402
from soulray.sources.synthetic import write_synthetic  # noqa: E402
from soulray.store import ShardTarget, VersionStore, build_manifest  # noqa: E402
from soulray.store.shards import write_batch  # noqa: E402


def median_time(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def synthetic_units(rows: int, workdir: Path) -> pa.Table:
    path = workdir / "synthetic.parquet"
    write_synthetic(path, rows, seed=0, chunk_rows=min(rows, 100_000))
    spec = SourceSpec(path=str(path), columns={"description": "description", "topic": "topic"})
    return pa.concat_tables([normalise_fragment(f, spec) for f in plan_fragments(spec).fragments])


def bench_store_write(units: pa.Table, root: str, s3: S3Config, rows_per_shard: int, repeats: int) -> dict:
    """A whole version (shards + checksums + manifest + latest) vs bare write_to_dataset of the same
    rows, with the same compression and rows per file, to the same place."""
    data = units.select(UNIT.names)

    def soulray_publish() -> None:
        store = VersionStore(root, "bench", s3=s3)
        run_id = uuid.uuid4().hex[:12]
        target = ShardTarget(version_uri=store.version_uri(run_id), run_id=run_id, data_schema=UNIT, s3=s3)
        facts = []
        for start in range(0, units.num_rows, rows_per_shard):
            facts += write_batch(units.slice(start, rows_per_shard), target).to_pylist()
        store.commit(build_manifest(store=store, version=run_id, run_id=run_id, parent_version=None, job="bench",
                                    config={}, config_hash="-", inputs=[], input_rows=units.num_rows,
                                    data_schema=UNIT, shard_facts=facts))

    def bare_pyarrow() -> None:
        location = resolve(f"{root}/bare/{uuid.uuid4().hex[:12]}", s3)
        pq.write_to_dataset(data, location.path, filesystem=location.filesystem, compression="zstd",
                            max_rows_per_file=rows_per_shard, row_group_size=rows_per_shard)

    soulray_publish(), bare_pyarrow()  # warm caches and connections
    soulray_s, bare_s = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both sides alike
        soulray_s.append(median_time(soulray_publish, 1))
        bare_s.append(median_time(bare_pyarrow, 1))
    soulray_t, bare_t = statistics.median(soulray_s), statistics.median(bare_s)
    megabytes = data.nbytes / 1e6
    return {"rows": units.num_rows, "soulray_rows_per_s": units.num_rows / soulray_t,
            "soulray_mb_per_s": megabytes / soulray_t, "baseline_rows_per_s": units.num_rows / bare_t,
            "baseline_mb_per_s": megabytes / bare_t, "ratio": bare_t / soulray_t}


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}"


def machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "pyarrow": pa.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats")
    parser.add_argument("--out", default="bench/results", help="folder for latest.md / latest.json")
    args = parser.parse_args()
    rows, repeats = (50_000, 3) if args.quick else (300_000, 5)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        units = synthetic_units(rows, Path(workdir))
        results["store_write_local"] = bench_store_write(units, f"{workdir}/store", S3Config(), 50_000, repeats)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        moto, endpoint = start_moto()
        try:
            s3 = S3Config(endpoint_url=endpoint, region="us-east-1")
            boto3_client(s3).create_bucket(Bucket="bench")
            results["store_write_s3_loopback"] = bench_store_write(units, "s3://bench/soulray", s3, 50_000, repeats)
        finally:
            moto.terminate()
    write_report(Path(args.out), results, quick=args.quick)
    return 0


def write_report(out: Path, results: dict[str, dict], *, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "quick": quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": results}
    (out / "latest.json").write_text(json.dumps(report, indent=2))
    lines = [f"# soulray benchmarks ({'quick' if quick else 'full'}, {report['when']})", "",
             f"machine: {json.dumps(report['machine'])}", "",
             "| benchmark | rows | soulray | baseline | ratio (soulray / baseline speed) |", "|---|---|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| {name} | {result['rows']} | {result['soulray_rows_per_s']:,.0f} rows/s, "
                     f"{result['soulray_mb_per_s']:.1f} MB/s | {result['baseline_rows_per_s']:,.0f} rows/s, "
                     f"{result['baseline_mb_per_s']:.1f} MB/s | {result['ratio']:.2f}× |")
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
