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
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.fs import (  # noqa: E402
    S3Config,  # noqa: E402
    boto3_client,
    resolve,
)
from soulray.schema import UNIT  # noqa: E402
from soulray.sources import normalise_fragment, plan_fragments  # noqa: E402
from soulray.sources.settings import SourceSpec  # noqa: E402
from soulray.sources.synthetic import write_synthetic  # noqa: E402
from soulray.store import ShardTarget, VersionStore, build_manifest  # noqa: E402
from soulray.store.shards import write_batch  # noqa: E402

SMILECHAT_QA = Path(__file__).resolve().parent.parent / "tests" / "data" / "smilechat-sample" / "qa.parquet"


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
    rows, with the same compression and rows per file, to the same place. write_to_dataset uses a
    thread per core; the shard writers here run on a thread per core too (in a job they are Ray tasks)."""
    from concurrent.futures import ThreadPoolExecutor

    data = units.select(UNIT.names)

    def soulray_publish() -> None:
        store = VersionStore(root, "bench", s3=s3)
        run_id = uuid.uuid4().hex[:12]
        target = ShardTarget(version_uri=store.version_uri(run_id), run_id=run_id, data_schema=UNIT, s3=s3)
        slices = [units.slice(start, rows_per_shard) for start in range(0, units.num_rows, rows_per_shard)]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            facts = [fact for table in pool.map(lambda piece: write_batch(piece, target), slices)
                     for fact in table.to_pylist()]
        store.commit(build_manifest(store=store, version=run_id, run_id=run_id, job="bench",
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


# How a real provider's limiter differs from soulray's own view (soulray/offline/server.py, ServerConfig;
# DESIGN.md, "How real providers behave"): one run of the regenerate job per mode.
QUOTA_MODES = {
    "same counter": {},
    "characters": {"token_counting": "characters"},
    "1.5x tokens": {"token_counting": 1.5},
    "max_tokens charge": {"charge": "max_tokens"},
    "1 s quanta": {"quantum_s": 1.0},
}
QUOTA_RPM = {"BENCH_KEY_A": 120, "BENCH_KEY_B": 60, "BENCH_KEY_C": 240}  # and 100k TPM each
QUOTA_TPM = 100_000
WARM_UP_S, TAIL_S = 60.0, 30.0  # left out of the steady window: the first minute (learning), the last rows


def bench_rewrite_quota(workdir: Path, rows: int, modes: list[str] | None = None) -> dict:
    """The regenerate job on real SMILECHAT Q&A rows through three keys (120 / 60 / 240 RPM, 100k TPM
    each, configured with exactly those limits), 200-800 ms latency, against the local server in each
    provider mode. Over the steady window (after the first minute, before the last 30 s): each key's
    share of its binding limit (requests or tokens a minute, whichever its calls came closer to), and
    the share of requests answered 429."""
    from soulray.config import RegenerateConfig, load_config
    from soulray.offline.server import LocalLLMServer, ServerConfig, SimulatedKey
    from soulray.regenerate import run

    results = {}
    for mode in modes or list(QUOTA_MODES):
        limits = {name: SimulatedKey(rpm=rpm, tpm=QUOTA_TPM) for name, rpm in QUOTA_RPM.items()}
        server = LocalLLMServer(ServerConfig(keys={os.environ[n]: v for n, v in limits.items()}, latency_ms=(200, 800),
                                             **QUOTA_MODES[mode]))
        url = server.start()
        keys = [{"name": n.lower(), "api_key_env": n, "rpm": v.rpm, "tpm": v.tpm, "max_concurrent": 64}
                for n, v in limits.items()]
        source = {"path": str(SMILECHAT_QA), "layout": "long",
                  "columns": {"question_id": "question_id", "answer_id": "answer_id", "question": "question",
                              "answer": "answer"}}
        config = load_config(RegenerateConfig, None, [
            f"sources=[{json.dumps(source)}]", f"storage.root={workdir}/quota-{uuid.uuid4().hex[:8]}",
            f"limit={rows}", f"rewrite.base_url={url}", f"rewrite.keys={json.dumps(keys)}", "rewrite.actors=2",
            "rewrite.concurrency_per_actor=64", "rewrite.max_tokens=4096", "rewrite.min_turns=2",
            "rewrite.max_turns=40", "filters.source=[]", "filters.dialogue=[]", "dedup.source.enabled=false",
            "dedup.dialogue.enabled=false"])
        started = time.perf_counter()
        manifest = run(config).manifest
        wall = time.perf_counter() - started
        server.stop()
        results[mode] = quota_figures(server, limits, manifest, wall)
        print(f"[bench] quota {mode}: {json.dumps(results[mode])}", flush=True)
    return {"rows": rows, "modes": results}


def quota_figures(server, limits: dict, manifest, wall: float) -> dict:
    """What one quota run did, from the server's own log of admissions and refusals."""
    logs = {name: server.stats[os.environ[name]] for name in limits}
    admitted = [moment for stats in logs.values() for moment, _, _ in stats.log]
    start, end = min(admitted) + WARM_UP_S, max(admitted) - TAIL_S
    minutes = max(end - start, 1e-9) / 60
    per_key, served, refused = {}, 0, 0
    for name, stats in logs.items():
        calls = [(moment, tokens) for moment, tokens, _ in stats.log if start <= moment < end]
        requests_share = len(calls) / (limits[name].rpm * minutes)
        tokens_share = sum(tokens for _, tokens in calls) / (limits[name].tpm * minutes)
        key_refused = sum(1 for moment in stats.refused_at if start <= moment < end)
        per_key[name] = {"binding": "requests" if requests_share >= tokens_share else "tokens",
                         "utilisation": max(requests_share, tokens_share), "requests": len(calls),
                         "rate_limited": key_refused, "rate_limited_whole_run": len(stats.refused_at)}
        served += len(calls)
        refused += key_refused
    counts = manifest.counts
    usage = (manifest.usage.keys if manifest.usage else {})
    return {"wall_s": wall, "steady_window_s": end - start, "per_key": per_key,
            "utilisation_min": min(key["utilisation"] for key in per_key.values()),
            "rate_limited_share": refused / max(1, served + refused),
            "rate_limited_share_whole_run": sum(len(s.refused_at) for s in logs.values())
            / max(1, sum(len(s.log) + len(s.refused_at) for s in logs.values())),
            "rewrite_failed_rows": sum(counts.by_stage.get("rewrite", {}).values()),
            "parse_rejects": sum(counts.by_stage.get("parse", {}).values()),
            "output_rows": counts.output_rows, "cut_by_length": sum(getattr(k, "cut_by_length", 0) for k in usage.values())}


def bench_rewrite_overhead(workdir: Path, rows: int, repeats: int) -> dict:
    """Zero latency: rewrites/s through the regenerate job vs a plain asyncio + openai loop in one
    process (same prompts, same server process, 64 requests in flight, no quotas/cache/accounting).
    The job's rate is marginal, (2N - N rows) / (t(2N) - t(N)), so Ray's and the actors' start-up, a
    fixed cost per run, is reported apart from the per-row cost."""
    import asyncio

    import openai

    from soulray.config import RegenerateConfig, load_config
    from soulray.regenerate import run
    from soulray.rewrite.prompts import load_template
    from soulray.sources.settings import SourceSpec

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "soulray", "serve-llm", "--port", str(port), "--rpm", "10000000",
                               "--tpm", "10000000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    url = f"http://127.0.0.1:{port}/v1"
    sources = {}
    for size in (rows, 2 * rows):
        sources[size] = workdir / f"overhead-{size}.parquet"
        write_synthetic(sources[size], size, seed=5, near_duplicate_rate=0.0)
    spec = SourceSpec(path=str(sources[2 * rows]))
    units = pa.concat_tables([normalise_fragment(f, spec) for f in plan_fragments(spec).fragments]).to_pylist()
    template = load_template("soulchat-v1")
    prompts = [template.render(u["question"], u["description"], u["answer"]) for u in units]

    async def plain_loop() -> None:
        semaphore = asyncio.Semaphore(64)
        async with openai.AsyncOpenAI(base_url=url, api_key="plain", max_retries=0) as client:  # closed in the loop

            async def one(messages):
                async with semaphore:
                    response = await client.chat.completions.create(model="gpt-3.5-turbo", messages=messages)
                    return response.choices[0].message.content

            await asyncio.gather(*(one(m) for m in prompts))

    def soulray_job(size: int) -> float:
        config = load_config(RegenerateConfig, None, [
            f"sources=[{{path: {sources[size]}}}]", f"storage.root={workdir}/overhead-{uuid.uuid4().hex[:8]}",
            f"rewrite.base_url={url}", "rewrite.actors=2", "rewrite.concurrency_per_actor=32",
            "rewrite.min_turns=2", "rewrite.max_turns=40", "storage.rows_per_shard=5000",
            # the rewrite alone, as the baseline does: no filters, no dedup (whose materialisation would
            # also move the rewrite's time out of pipeline_s)
            "filters.source=[]", "filters.dialogue=[]", "dedup.source.enabled=false", "dedup.dialogue.enabled=false"])
        return run(config).manifest.timings_s["pipeline_s"]

    soulray_job(rows)  # warm up: Ray started, imports cached
    small, large, baseline = [], [], []
    for _ in range(repeats):
        small.append(soulray_job(rows))
        large.append(soulray_job(2 * rows))
        baseline.append(median_time(lambda: asyncio.run(plain_loop()), 1))
    server.terminate()
    small_t, large_t, plain_t = statistics.median(small), statistics.median(large), statistics.median(baseline)
    marginal = rows / max(large_t - small_t, 1e-9)
    plain = 2 * rows / plain_t
    return {"rows": 2 * rows, "soulray_rows_per_s": marginal, "soulray_whole_run_rows_per_s": 2 * rows / large_t,
            "fixed_startup_s": max(0.0, small_t - rows / marginal), "baseline_rows_per_s": plain,
            "ratio": marginal / plain}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int) -> None:
    import socket

    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return process, f"http://127.0.0.1:{port}"


def machine() -> dict:
    import psutil
    import ray

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": model or platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "ray": ray.__version__,
            "pyarrow": pa.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats")
    parser.add_argument("--out", default="bench/results", help="folder for latest.md / latest.json")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="run these sections only: e2e store rewrite quota finetune evaluate dedup filters broker batch")
    parser.add_argument("--quota-rows", type=int, help="SMILECHAT rows per quota mode (default 1200; quick 300)")
    parser.add_argument("--quota-modes", nargs="+", choices=list(QUOTA_MODES), metavar="MODE",
                        help=f"quota modes to run (default all: {list(QUOTA_MODES)})")
    args = parser.parse_args()
    # API keys live in the environment before Ray starts, as node setup would put them: workers inherit it
    for index, name in enumerate(("BENCH_KEY_A", "BENCH_KEY_B", "BENCH_KEY_C")):
        os.environ[name] = f"sk-bench-{index}-{uuid.uuid4().hex}"
    rows, repeats = (50_000, 3) if args.quick else (300_000, 5)
    results: dict[str, dict] = {}
    sections: dict[str, dict] = {}  # per section: wall seconds, load average before/after, error
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)

        def store_write() -> None:
            units = synthetic_units(rows, work)
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

        def rewrite() -> None:
            results["rewrite_overhead_zero_latency"] = bench_rewrite_overhead(work, 1_000 if args.quick else 3_000,
                                                                              1 if args.quick else 3)

        def quota() -> None:
            rows = args.quota_rows or (300 if args.quick else 1_200)
            results["rewrite_quota_modes"] = bench_rewrite_quota(work, rows, args.quota_modes)

        # the bench/*.py beside this script, each also runnable alone
        def e2e() -> None:
            import e2e as e2e_bench
            results["e2e"] = e2e_bench.run(work, args.quick)

        def finetune() -> None:
            import train as train_bench
            results["finetune"] = train_bench.keep_plot(train_bench.run(work, args.quick), out)

        def evaluate() -> None:
            import evaluate as evaluate_bench
            results["evaluate"] = evaluate_bench.run(work, args.quick)

        def dedup() -> None:
            import dedup as dedup_bench
            results["dedup"] = dedup_bench.run(work, args.quick)

        def filters() -> None:
            import filters as filters_bench
            results["filters"] = filters_bench.run(work, args.quick)

        def broker() -> None:
            import broker as broker_bench
            results["broker"] = broker_bench.run(work, args.quick)

        def batch() -> None:
            import batch as batch_bench
            results["batch"] = batch_bench.run(work, args.quick)

        # the longest first: a section that fails is reported and the rest still run
        every = {"e2e": e2e, "store": store_write, "rewrite": rewrite, "quota": quota, "finetune": finetune,
                 "evaluate": evaluate, "dedup": dedup, "filters": filters, "batch": batch, "broker": broker}
        chosen = args.only or list(every)
        unknown = sorted(set(chosen) - set(every))
        if unknown:
            parser.error(f"--only: no section {unknown}; the sections are {list(every)}")
        for name in chosen:
            started, load = time.perf_counter(), os.getloadavg()[0]
            print(f"[bench] {name} ...", flush=True)
            try:
                every[name]()
                error = None
            except Exception as exc:  # noqa: BLE001 - reported in the table, the other sections still run
                error = f"{type(exc).__name__}: {exc}"[:2000]
                traceback.print_exc()
                print(f"[bench] {name} failed: {error}", file=sys.stderr, flush=True)
            sections[name] = {"wall_s": time.perf_counter() - started, "load_before": load,
                              "load_after": os.getloadavg()[0], "error": error}
            # after every section, so a long run that is stopped keeps what it measured
            write_report(out, results, quick=args.quick, sections=sections, done=name == chosen[-1])
    return 1 if any(section["error"] for section in sections.values()) else 0


def write_report(out: Path, results: dict[str, dict], *, quick: bool, sections: dict[str, dict] | None = None,
                 done: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sections = sections or {}
    report = {"machine": machine(), "quick": quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "complete": done, "sections": sections, "results": results}
    (out / "latest.json").write_text(json.dumps(report, indent=2))
    lines = [f"# soulray benchmarks ({'quick' if quick else 'full'}, {report['when']}"
             f"{'' if done else ', still running'})", "",
             f"machine: {json.dumps(report['machine'])}", ""]
    if sections:
        lines += ["| section | wall | load average (1 min) before → after | |", "|---|---|---|---|"]
        lines += [f"| {name} | {section['wall_s']:.0f} s | {section['load_before']:.1f} → {section['load_after']:.1f} | "
                  f"{'FAILED: ' + section['error'].splitlines()[0] if section['error'] else 'ok'} |"
                  for name, section in sections.items()]
        lines += ["", f"load average is of the whole machine (it has {os.cpu_count()} CPUs): above that, something "
                  "else was running and the absolute rates suffer; the ratios less so.", ""]
    stores = {name: result for name, result in results.items() if "soulray_mb_per_s" in result}
    if stores:
        lines += ["| benchmark | rows | soulray | baseline | ratio (soulray / baseline speed) |", "|---|---|---|---|---|"]
    for name, result in stores.items():
        lines.append(f"| {name} | {result['rows']} | {result['soulray_rows_per_s']:,.0f} rows/s, "
                     f"{result['soulray_mb_per_s']:.1f} MB/s | {result['baseline_rows_per_s']:,.0f} rows/s, "
                     f"{result['baseline_mb_per_s']:.1f} MB/s | {result['ratio']:.2f}× |")
    overhead = results.get("rewrite_overhead_zero_latency")
    if overhead:
        lines += ["", "| rewrite, zero latency | soulray job (marginal) | whole run | start-up | plain asyncio+openai loop | ratio |",
                  "|---|---|---|---|---|---|",
                  f"| {overhead['rows']} rows | {overhead['soulray_rows_per_s']:.0f} rows/s | "
                  f"{overhead['soulray_whole_run_rows_per_s']:.0f} rows/s | {overhead['fixed_startup_s']:.1f} s | "
                  f"{overhead['baseline_rows_per_s']:.0f} rows/s | {overhead['ratio']:.2f}× |"]
    quota = results.get("rewrite_quota_modes")
    if quota:
        lines += ["", quota_markdown(quota)]
    if "finetune" in results:
        import train as train_bench

        lines += ["", train_bench.markdown(results["finetune"])]
    if "evaluate" in results:
        import evaluate as evaluate_bench

        lines += ["", evaluate_bench.markdown(results["evaluate"])]
    if "dedup" in results:
        import dedup as dedup_bench

        lines += ["", dedup_bench.markdown(results["dedup"])]
    if "filters" in results:
        import filters as filters_bench

        lines += ["", filters_bench.markdown(results["filters"])]
    if "broker" in results:
        import broker as broker_bench

        lines += ["", broker_bench.markdown(results["broker"])]
    if "batch" in results:
        import batch as batch_bench

        lines += ["", batch_bench.markdown(results["batch"])]
    if "e2e" in results:
        import e2e as e2e_bench

        lines += ["", e2e_bench.markdown(results["e2e"])]
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def quota_markdown(quota: dict) -> str:
    names = list(QUOTA_RPM)
    lines = [f"Quota modes: the regenerate job on {quota['rows']} SMILECHAT rows, keys {' / '.join(map(str, QUOTA_RPM.values()))} "
             f"RPM and {QUOTA_TPM:,} TPM each, 200-800 ms latency; steady window = after the first {WARM_UP_S:.0f} s, "
             f"before the last {TAIL_S:.0f} s", "",
             "| provider mode | wall | steady window | " + " | ".join(f"{n[-5:]} (binding)" for n in names)
             + " | lowest | 429s steady (whole run) | rewrite failures | parse rejects | cut by length |",
             "|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|"]
    for mode, result in quota["modes"].items():
        keys = " | ".join(f"{result['per_key'][n]['utilisation']:.3f} ({result['per_key'][n]['binding']})" for n in names)
        lines.append(f"| {mode} | {result['wall_s']:.0f} s | {result['steady_window_s']:.0f} s | {keys} | "
                     f"{result['utilisation_min']:.3f} | {result['rate_limited_share']:.2%} "
                     f"({result['rate_limited_share_whole_run']:.2%}) | {result['rewrite_failed_rows']} | "
                     f"{result['parse_rejects']} | {result['cut_by_length']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
