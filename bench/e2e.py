"""End to end: the regenerate job (`python jobs/regenerate.py`, every stage on, a local Ray of its own)
over synthetic PsyQA-shaped sources of growing size, through `soulray serve-llm` at zero latency.

Per size: wall time of the whole command, rows/s, and the peak memory of the job's process tree, sampled
every second (a shorter spike can be missed; the sampling costs ~10% of one core), two ways: PSS (driver,
Ray's daemons and workers; shared object-store pages split between the processes that map them), and
"memory": each process's own (PSS less the store's pages) plus the store's pages in RAM, read from its
/dev/shm file, which still counts the pages of a worker that has ended (PSS loses them). The figure that
tells how cost grows is rows/s at each size relative to rows/s at the smallest size in the same run
(1.00 = linear time).

    python bench/e2e.py                                 # 10k, 100k and 1M, what `make bench` runs (~56 min on 2 cores)
    python bench/e2e.py --sizes 10000 100000            # the first two (~7 min)
    python bench/e2e.py --sizes 1000000 --trace DIR     # and every process's memory through the run, plotted
    python bench/e2e.py --sizes 1000000 --set ray.object_store_mb=1536   # any job setting, for every size

With --trace, every 5 s each process of the job's tree is sampled (RSS, USS: pages only it holds, PSS) under
its Ray process title (`ray::MapWorker(MapBatches(Rewriter))`, `ray::IDLE`, raylet, the driver …) into
DIR/memory-<rows>.jsonl, the job's log is kept as DIR/job-<rows>.log (its progress lines say how many rows
the rewrite had done when), and DIR/memory-<rows>.png plots it. Each sample also splits out the pages of
Ray's object store (the /dev/shm/plasma mapping) the process has resident: they count in its RSS, in its
PSS, and even in its USS while no other process maps them (a worker that wrote a block nobody has read
yet), though they are the store's, bounded by `ray.object_store_mb`. The report gives each process group's
memory less those pages, and the store's pages as a group of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soulray.sources.synthetic import write_synthetic  # noqa: E402
from soulray.store import VersionStore  # noqa: E402

FULL_SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (2_000, 10_000)


def run(workdir: Path, quick: bool, sizes: tuple[int, ...] | None = None, trace: Path | None = None,
        settings: tuple[str, ...] = ()) -> dict:
    from run import free_port, wait_for  # bench/run.py, beside this script

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "soulray", "serve-llm", "--port", str(port), "--rpm", "10000000",
                               "--tpm", "10000000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port)
        points = [_one_size(workdir, size, f"http://127.0.0.1:{port}/v1", trace, settings)
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


def _one_size(workdir: Path, rows: int, url: str, trace: Path | None = None, settings: tuple[str, ...] = ()) -> dict:
    source = workdir / f"e2e-{rows}.parquet"
    write_synthetic(source, rows, seed=11, chunk_rows=min(rows, 50_000))
    root = workdir / f"e2e-out-{rows}"
    command = [sys.executable, str(ROOT / "jobs" / "regenerate.py"), "--config", "soulray/configs/demo.yaml",
               "--set", f"sources=[{{path: {source}, columns: {{description: description, topic: topic}}}}]",
               "--set", f"storage.root={root}", "--set", f"rewrite.base_url={url}", "--set", "storage.rows_per_shard=20000",
               "--set", "rewrite.concurrency_per_actor=32", *[part for setting in settings for part in ("--set", setting)]]
    started, load = time.perf_counter(), os.getloadavg()[0]
    log_path = (trace or workdir) / f"job-{rows}.log"  # a file, not a pipe: a long run's log outgrows a pipe
    samples = (trace / f"memory-{rows}.jsonl").open("w") if trace else None
    with log_path.open("w") as log:
        job = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = peak_heap = peak_store = peak_memory = tick = 0
        while job.poll() is None:
            processes = process_tree(job.pid)
            total, store = (sum(process[field] for process in processes) for field in ("pss", "store_pss"))
            peak, peak_store, peak_heap = max(peak, total), max(peak_store, store), max(peak_heap, total - store)
            peak_memory = max(peak_memory, job_memory(processes))
            if samples and tick % TRACE_EVERY == 0:
                now = time.time()
                samples.writelines(json.dumps({"t": now, **process}) + "\n" for process in processes)
                samples.flush()
            tick += 1
            time.sleep(1.0)
    wall = time.perf_counter() - started
    if samples:
        samples.close()
    if job.returncode != 0:
        raise RuntimeError(f"e2e {rows}: the job failed:\n{log_path.read_text()[-3000:]}")
    manifest = VersionStore(str(root), "smilechat-demo").manifest("latest")
    counts = manifest.counts
    if counts.output_rows + counts.rejected_rows != rows:
        raise RuntimeError(f"e2e {rows}: {counts.output_rows} published + {counts.rejected_rows} rejected")
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "peak_pss_mb": peak / 1e6,
            "peak_memory_mb": peak_memory / 1e6,
            "peak_heap_mb": peak_heap / 1e6, "peak_store_pages_mb": peak_store / 1e6,
            "output_rows": counts.output_rows, "rejected_rows": counts.rejected_rows,
            "by_stage": counts.by_stage,
            # dedup phase times as before (…_identify_s), from the stage reports where they now live
            "timings_s": {**manifest.timings_s, **{f"{name}_{phase}_s": seconds for name, report in manifest.stages.items()
                                                   for phase, seconds in report.seconds.items()}}, "load_before": load,
            "load_after": os.getloadavg()[0]}


TRACE_EVERY = 5  # samples (seconds) between two lines per process in the trace


def process_tree(pid: int) -> list[dict]:
    """Every process of the job's tree now: pid, Ray's process title (or the command), RSS, USS, PSS."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    found = []
    for process in processes:
        try:
            memory, command = process.memory_full_info(), process.cmdline()
        except psutil.Error:
            continue
        store_pss, store_private = object_store_pages(process.pid)
        name = _title(command)
        found.append({"pid": process.pid, "name": name, "rss": memory.rss, "uss": memory.uss,
                      "pss": memory.pss, "store_pss": store_pss, "store_private": store_private,
                      **({"store_file": object_store_file(process.pid)} if name == "raylet" else {})})
    return found


def job_memory(processes: list[dict]) -> int:
    """The job's memory: every process's own (PSS less the store's pages) and the store's pages in memory.
    PSS alone loses the store's pages of a worker that has ended (nobody maps them; they are still in RAM)."""
    own = sum(process["pss"] - process.get("store_pss", 0) for process in processes)
    files = [process["store_file"] for process in processes if "store_file" in process]
    return own + (sum(files) if files else sum(process.get("store_pss", 0) for process in processes))


def object_store_file(pid: int) -> int:
    """Bytes of Ray's object store in memory: the pages of its /dev/shm/plasma* file (deleted once mapped;
    the raylet holds it open), whoever wrote them and whether or not a live process maps them; at most
    `ray.object_store_mb`."""
    total = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if "/dev/shm/plasma" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
            except OSError:
                continue
    except OSError:
        pass
    return total


def object_store_pages(pid: int) -> tuple[int, int]:
    """(PSS, private bytes) of the pages of Ray's object store (the /dev/shm/plasma* mapping) a process has
    resident. smaps calls a shared-memory page 'private' while only one process maps it: a worker that
    wrote a block nobody has read yet holds its pages in its USS, though they are the store's (counted
    against `ray.object_store_mb`, and reused for the next objects once freed)."""
    pss = private = 0
    try:
        with open(f"/proc/{pid}/smaps", "rb") as smaps:
            inside = False
            for line in smaps:
                if line[:1] in b"0123456789abcdef" and b"-" in line[:20]:  # a mapping's header line
                    inside = b"plasma" in line
                elif inside:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                        private += int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, private


def _title(command: list[str]) -> str:
    """Ray workers set their title to `ray::<what they run>`; daemons and the driver are named by program."""
    if not command:
        return "?"
    if command[0].startswith("ray::"):
        return command[0].split(" ")[0]
    program = next((Path(part).name for part in command if part.endswith((".py", "raylet", "gcs_server"))),
                   Path(command[0]).name)
    return program


_PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*rewrite progress: (\d+)/\d+ rows")


def rows_timeline(log_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times, rows the rewrite had done) from the job's progress lines (one every 10 s)."""
    times, rows = [0.0], [0]
    for line in log_path.read_text(errors="replace").splitlines():
        match = _PROGRESS.match(line)
        if match:
            times.append(time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000)
            rows.append(int(match[3]))
    return np.array(times), np.array(rows)


def process_group(name: str) -> str:
    if "Rewriter" in name:
        return "rewrite actors"
    if name in ("raylet", "gcs_server") or "dashboard" in name or "log_monitor" in name or "runtime_env" in name:
        return "Ray daemons"
    if name == "ray::IDLE":
        return "idle workers"
    if name.startswith("ray::"):
        return "other Ray workers (tasks, shuffle, broker …)"
    return "driver and others"


def trace_report(trace: Path, rows: int) -> dict:
    """From a --trace run: each rewrite actor's RSS and USS when the rewrite had done 10% of the rows and
    at its largest after 90% of them (the goal: flat within ±20%), the job's PSS by process group at its peak, and the
    plot (memory-<rows>.png)."""
    lines = [json.loads(line) for line in (trace / f"memory-{rows}.jsonl").read_text().splitlines()]
    times, done = rows_timeline(trace / f"job-{rows}.log")
    at_rows = lambda t: float(np.interp(t, times[1:], done[1:])) if len(times) > 1 else 0.0  # noqa: E731
    actors: dict[int, list[dict]] = {}
    for line in lines:
        if "Rewriter" in line["name"]:
            actors.setdefault(line["pid"], []).append({**line, "rows": at_rows(line["t"])})
    per_actor = {}
    for pid, samples in actors.items():
        # the sample at 10% of the rows, and the largest after 90% (the very last one is the actor exiting)
        early = next((s for s in samples if s["rows"] >= rows / 10), samples[0])
        late = [s for s in samples[:-1] if s["rows"] >= 0.9 * rows] or samples[-1:]
        last = max(late, key=lambda s: s["rss"])
        per_actor[pid] = {"rows_early": early["rows"], "rss_early_mb": early["rss"] / 1e6, "uss_early_mb": early["uss"] / 1e6,
                          "rows_last": last["rows"], "rss_last_mb": last["rss"] / 1e6, "uss_last_mb": last["uss"] / 1e6,
                          "rss_growth": last["rss"] / early["rss"] - 1, "uss_growth": last["uss"] / early["uss"] - 1,
                          "heap_early_mb": _heap(early) / 1e6, "heap_last_mb": _heap(last) / 1e6,
                          "heap_growth": _heap(last) / max(_heap(early), 1) - 1}
    moments: dict[float, dict[str, float]] = {}  # t → PSS by group, the object store's pages as a group of their own
    for line in lines:
        groups = moments.setdefault(line["t"], {})
        group = process_group(line["name"])
        groups[group] = groups.get(group, 0) + line["pss"] - line.get("store_pss", 0)
        groups[STORE] = groups.get(STORE, 0) + line.get("store_pss", 0)
    peak_t = max(moments, key=lambda t: sum(moments[t].values())) if moments else 0
    heap_t = max(moments, key=lambda t: sum(moments[t].values()) - moments[t][STORE]) if moments else 0
    _plot(trace / f"memory-{rows}.png", rows, moments, actors)
    return {"actors": per_actor, "peak_pss_by_group_mb": {g: v / 1e6 for g, v in moments.get(peak_t, {}).items()},
            "peak_rows_done": at_rows(peak_t),
            "peak_heap_by_group_mb": {g: v / 1e6 for g, v in moments.get(heap_t, {}).items() if g != STORE},
            "peak_heap_rows_done": at_rows(heap_t)}


STORE = "object store pages"


def _heap(sample: dict) -> int:
    """A process's own memory: its USS less the object store's pages only it maps (older traces: USS)."""
    return sample["uss"] - sample.get("store_private", 0)


def _plot(path: Path, rows: int, moments: dict[float, dict[str, float]], actors: dict[int, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8))
    start = min(moments) if moments else 0
    ts = sorted(moments)
    for group in sorted({g for groups in moments.values() for g in groups}):
        top.plot([(t - start) / 60 for t in ts], [moments[t].get(group, 0) / 1e9 for t in ts], label=group)
    top.plot([(t - start) / 60 for t in ts], [sum(moments[t].values()) / 1e9 for t in ts], "k", label="whole job")
    top.set(xlabel="minutes", ylabel="PSS, GB",
            title=f"regenerate job, {rows:,} rows: memory by process group (less store pages) and the store's pages")
    top.legend(fontsize=7)
    for pid, samples in actors.items():
        x = [s["rows"] / 1e3 for s in samples]
        bottom.plot(x, [s["rss"] / 1e6 for s in samples], label=f"rewrite actor {pid}: RSS")
        bottom.plot(x, [_heap(s) / 1e6 for s in samples], "--", label=f"rewrite actor {pid}: own (USS less store pages)")
    bottom.set(xlabel="rows rewritten (thousands)", ylabel="MB", title="each rewrite actor: RSS and its own memory")
    bottom.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(result: dict) -> str:
    lines = ["| regenerate job, end to end (zero-latency local LLM) | wall | rows/s | rate vs smallest | marginal rows/s "
             "| peak PSS (tree) | of it, less the store's pages | store pages | peak memory (own + store file) "
             "| published + rejected |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for point in result["points"]:
        marginal = f"{point['marginal_rows_per_s']:.0f}" if point["marginal_rows_per_s"] else "–"
        lines.append(f"| {point['rows']:,} rows | {point['wall_s']:.0f} s | {point['rows_per_s']:.0f} | "
                     f"{point['rate_vs_smallest']:.2f}× | {marginal} | {point.get('peak_pss_mb', point.get('peak_rss_mb', 0)):,.0f} MB | "
                     f"{point.get('peak_heap_mb', 0):,.0f} MB | {point.get('peak_store_pages_mb', 0):,.0f} MB | "
                     f"{point.get('peak_memory_mb', 0):,.0f} MB | {point['output_rows']:,} + {point['rejected_rows']:,} |")
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
    parser.add_argument("--trace", help="folder for each size's per-process memory samples, job log and plot")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a job setting for every size, as the job's --set (e.g. ray.object_store_mb=1536)")
    args = parser.parse_args()
    trace = Path(args.trace) if args.trace else None
    if trace:
        trace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        result = run(Path(workdir), False, tuple(args.sizes), trace, tuple(args.set))
    if trace:
        result["traces"] = {rows: trace_report(trace, rows) for rows in args.sizes}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result))
    for rows, report in result.get("traces", {}).items():
        print(f"\n{rows:,} rows, memory trace ({trace}/memory-{rows}.png):")
        for pid, actor in report["actors"].items():
            print(f"  rewrite actor {pid}: RSS {actor['rss_early_mb']:.0f} MB at {actor['rows_early']:,.0f} rows → "
                  f"{actor['rss_last_mb']:.0f} MB at {actor['rows_last']:,.0f} ({100 * actor['rss_growth']:+.0f}%); "
                  f"USS {actor['uss_early_mb']:.0f} → {actor['uss_last_mb']:.0f} MB ({100 * actor['uss_growth']:+.0f}%); "
                  f"own (USS less store pages) {actor['heap_early_mb']:.0f} → {actor['heap_last_mb']:.0f} MB "
                  f"({100 * actor['heap_growth']:+.0f}%)")
        groups = ", ".join(f"{group} {mb:,.0f}" for group, mb in sorted(report["peak_pss_by_group_mb"].items()))
        print(f"  at the peak ({report['peak_rows_done']:,.0f} rows rewritten), PSS MB by group: {groups}")
        groups = ", ".join(f"{group} {mb:,.0f}" for group, mb in sorted(report["peak_heap_by_group_mb"].items()))
        print(f"  at the peak less store pages ({report['peak_heap_rows_done']:,.0f} rows rewritten), MB by group: {groups}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
