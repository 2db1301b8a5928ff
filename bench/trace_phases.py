"""Read a traced e2e run (`python bench/e2e.py --sizes N --trace DIR`) phase by phase.

    python bench/trace_phases.py DIR/job-N.log DIR/memory-N.jsonl
    python bench/trace_phases.py DIR/job-N.log DIR/memory-N.jsonl --by-rows regenerate.py,gcs_server

The first prints, for each Ray Data execution of the job (a phase starts at each "Execution plan" line of
the job's log), its largest 5-s sample of the job's memory (each process's own, PSS less store pages, plus
the store's pages in RAM: `e2e.job_memory`), the store's pages in it, and the four largest process groups by
their own memory. The second prints the PSS of the
named processes at rewritten-row counts (from the rewrite's progress lines), to compare two runs' growth
row for row. Both read only what the trace wrote; they start nothing.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import json
import re
from collections import defaultdict
from pathlib import Path

from e2e import job_memory  # bench/e2e.py, beside this script

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+"
PLAN = re.compile(STAMP + r"\s+INFO streaming_executor.py:\d+ -- Execution plan of Dataset \S+: (.*)")
PROGRESS = re.compile(STAMP + r" .*rewrite progress: (\d+)/")
ROWS = (100_000, 200_000, 400_000, 600_000, 800_000, 990_000)


def _seconds(stamp: str) -> float:
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _samples(memory: Path) -> dict[float, list[dict]]:
    by_time: dict[float, list[dict]] = defaultdict(list)
    with memory.open() as lines:
        for line in lines:
            sample = json.loads(line)
            by_time[sample["t"]].append(sample)
    return by_time


def phases(log: Path, memory: Path) -> None:
    starts = []
    for line in log.read_text().splitlines():
        if match := PLAN.match(line):
            operators = re.findall(r"\[([^\]]*)\]", match.group(2))
            starts.append((_seconds(match.group(1)), " -> ".join(op[:38] for op in operators[1:] or operators)))
    by_time = _samples(memory)
    times = sorted(by_time)
    if not times:
        raise SystemExit(f"{memory}: no samples")
    starts.append((times[-1] + 1, "end"))
    for (begin, name), (end, _) in zip(starts, starts[1:], strict=False):
        window = [t for t in times if begin <= t < end]
        if not window:
            continue
        peak = max(window, key=lambda t: job_memory(by_time[t]))
        groups: dict[str, float] = defaultdict(float)
        for sample in by_time[peak]:
            groups[sample["name"][:28]] += (sample["pss"] - sample.get("store_pss", 0)) / 1e6
        top = ", ".join(f"{group} {mb:.0f}" for group, mb in sorted(groups.items(), key=lambda kv: -kv[1])[:4])
        total = job_memory(by_time[peak]) / 1e6
        own = sum(s["pss"] - s.get("store_pss", 0) for s in by_time[peak]) / 1e6
        started = datetime.datetime.fromtimestamp(begin, datetime.UTC)
        print(f"{started:%H:%M:%S} {end - begin:6.0f}s peak {total:5.0f} MB store {total - own:4.0f} | {name[:70]} | {top}")


def by_rows(log: Path, memory: Path, names: list[str]) -> None:
    progress = [(_seconds(m.group(1)), int(m.group(2))) for line in log.read_text().splitlines()
                if (m := PROGRESS.match(line))]
    by_time = _samples(memory)
    totals: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t, samples in by_time.items():
        for sample in samples:
            for name in names:
                if sample["name"].startswith(name):
                    totals[t][name] += sample["pss"] / 1e6
    times = sorted(totals)
    if not times:
        raise SystemExit(f"{memory}: no samples of {', '.join(names)}")
    for want in ROWS:
        hit = next((t for t, rows in progress if rows >= want), None)
        if hit is None:
            continue
        t = times[min(bisect.bisect_left(times, hit), len(times) - 1)]
        print(f"{want:>9,} rows: " + ", ".join(f"{name} {totals[t][name]:.0f} MB" for name in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the trace's job-N.log")
    parser.add_argument("memory", type=Path, help="the trace's memory-N.jsonl")
    parser.add_argument("--by-rows", help="comma-separated process-name prefixes (e.g. regenerate.py,gcs_server)")
    args = parser.parse_args()
    if args.by_rows:
        by_rows(args.log, args.memory, args.by_rows.split(","))
    else:
        phases(args.log, args.memory)


if __name__ == "__main__":
    main()
