"""Does a Rewriter's memory grow with the rows it rewrites? Over synthetic units against the embedded
local server (zero latency), every 2,048 rows each Rewriter logs its process's memory: RSS, USS (pages
only this process holds), shared pages (the Ray object store's mmap among them) and, with --heap, the
traced Python heap; at the end the largest heap growth since the first sample.

    python bench/rewriter_memory.py --rows 16000                 # one Rewriter driven directly
    python bench/rewriter_memory.py --rows 100000 --pool         # the stage's Ray Data actor pool (2 actors)

Written for issues 10 and 22: in the 1M-row e2e the two rewrite actors' RSS grew from 0.48 to 0.92 GB
between ~400k and ~950k rows, while a Rewriter driven directly stays flat (~410 MB from 4k to 14k rows,
heap +<100 KB). --pool runs the same class the way the stage does (map_batches, ActorPoolStrategy) to
find out what grows: private memory, or object-store pages the process has touched (which RSS counts).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import psutil
import pyarrow as pa
import ray
import ray.data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.config import RegenerateConfig, load_config  # noqa: E402
from soulray.rewrite.stage import Rewriter, RewriteSession  # noqa: E402
from soulray.store import VersionStore  # noqa: E402

EVERY_ROWS = 2048


def memory_sample(rows: int) -> dict:
    """This process's memory now: RSS, USS, shared (object store pages included), traced Python heap."""
    info = psutil.Process().memory_full_info()
    heap = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return {"pid": os.getpid(), "rows": rows, "t": time.time(), "rss_mb": info.rss / 1e6, "uss_mb": info.uss / 1e6,
            "shared_mb": info.shared / 1e6, "heap_mb": heap / 1e6 if heap is not None else None}


class _Probed(Rewriter):
    """The stage's Rewriter, logging its process's memory every EVERY_ROWS rows to `log_path`."""

    def __init__(self, *, log_path: str, heap: bool, **kwargs) -> None:
        if heap:
            tracemalloc.start(8)
        super().__init__(**kwargs)
        self.log_path, self.rows, self.base = log_path, 0, None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        out = await super().__call__(batch)
        before, self.rows = self.rows, self.rows + batch.num_rows
        if before // EVERY_ROWS != self.rows // EVERY_ROWS:
            if tracemalloc.is_tracing() and self.base is None:
                self.base = tracemalloc.take_snapshot()
            with open(self.log_path, "a") as log:
                log.write(json.dumps(memory_sample(self.rows)) + "\n")
            if self.base is not None:  # the latest heap growth of this process, for the end of the run
                Path(f"{self.log_path}.heap-{os.getpid()}").write_text("\n".join(self.heap_growth(12)))
        return out

    def heap_growth(self, top: int) -> list[str]:
        if self.base is None:
            return []
        gc.collect()
        return [str(stat) for stat in tracemalloc.take_snapshot().compare_to(self.base, "traceback")[:top]]


@ray.remote(num_cpus=0.25)
class _Direct:
    def __init__(self, **kwargs) -> None:
        self.rewriter = _Probed(**kwargs)

    async def step(self, batch: pa.Table) -> None:
        await self.rewriter(batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_000)
    parser.add_argument("--pool", action="store_true", help="through Ray Data's actor pool, as the stage runs")
    parser.add_argument("--heap", action="store_true", help="trace the Python heap too (slower)")
    parser.add_argument("--log", help="memory samples as JSON lines (default: a temporary file, printed)")
    args = parser.parse_args()
    os.environ.setdefault("SOULRAY_PROBE_KEY", f"sk-probe-{uuid.uuid4().hex}")  # before Ray: workers inherit it
    with tempfile.TemporaryDirectory() as workdir:
        from run import synthetic_units  # bench/run.py, beside this script

        units = synthetic_units(args.rows, Path(workdir))
        source = Path(workdir) / "synthetic.parquet"  # where synthetic_units wrote them
        log_path = args.log or str(Path(workdir) / "memory.jsonl")
        config = load_config(RegenerateConfig, None, [
            "rewrite.keys=[{name: local, api_key_env: SOULRAY_PROBE_KEY, rpm: 10000000, tpm: 10000000000, "
            "max_concurrent: 64}]", f"sources=[{{path: {source}}}]", f"storage.root={workdir}/out"])
        ray.init(num_cpus=4, include_dashboard=False)
        store = VersionStore(config.storage.root, config.dataset)
        with RewriteSession(config.rewrite, run_id=uuid.uuid4().hex[:12], store=store, s3=config.s3) as session:
            kwargs = {"config": config.rewrite, "run": session.run, "log_path": log_path, "heap": args.heap}
            if args.pool:
                # blocks of 4 batches, as the regenerate job cuts them before the rewrite (regenerate.py):
                # one block of every row would have each task buffer all its output
                blocks = [units.slice(start, 4 * config.rewrite.batch_size)
                          for start in range(0, units.num_rows, 4 * config.rewrite.batch_size)]
                dataset = ray.data.from_arrow(blocks).map_batches(
                    _Probed, fn_constructor_kwargs=kwargs, batch_size=config.rewrite.batch_size,
                    batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=config.rewrite.actors),
                    num_cpus=config.rewrite.actor_num_cpus)
                rows = sum(batch.num_rows for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None))
                growth = []
            else:
                probe = _Direct.remote(**kwargs)
                for start in range(0, units.num_rows, 32):
                    ray.get(probe.step.remote(units.slice(start, 32)))
                rows, growth = units.num_rows, []
        print(f"{rows} rows rewritten")
        for line in Path(log_path).read_text().splitlines():
            sample = json.loads(line)
            heap = f", heap {sample['heap_mb']:.1f} MB" if sample["heap_mb"] is not None else ""
            print(f"pid {sample['pid']}: {sample['rows']} rows: RSS {sample['rss_mb']:.0f} MB, USS {sample['uss_mb']:.0f} "
                  f"MB, shared {sample['shared_mb']:.0f} MB{heap}", flush=True)
        for heap_log in sorted(Path(log_path).parent.glob(Path(log_path).name + ".heap-*")):
            growth += [f"pid {heap_log.name.rsplit('-', 1)[1]}: {line}" for line in heap_log.read_text().splitlines()]
        if growth:
            print("Python heap growth since the first sample:")
            for line in growth:
                print(" ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
