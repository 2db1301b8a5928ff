"""Does a Rewriter's memory grow with the rows it rewrites? One Rewriter, driven directly (no Ray Data) in
an async Ray actor, over synthetic units against the embedded local server: the actor's RSS every 2,048
rows, then the Python-heap growth (tracemalloc) since 2,048 rows, largest first.

    python bench/rewriter_memory.py --rows 16000

Written for issue 10: in the 1M-row e2e the two rewrite actors grew from 0.48 to 0.92 GB RSS between
~400k and ~950k rows. Driven this way a Rewriter stays flat (~410 MB from 4k to 14k rows, heap +<100 KB),
so that growth is in what surrounds it in the Ray Data actor pool, not in the caller.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import psutil
import pyarrow as pa
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.config import RegenerateConfig, load_config  # noqa: E402
from soulray.rewrite.stage import Rewriter, RewriteSession  # noqa: E402
from soulray.store import VersionStore  # noqa: E402


@ray.remote(num_cpus=0.25)
class _Probe:
    def __init__(self, config, run) -> None:
        tracemalloc.start(4)
        self.rewriter = Rewriter(config=config, run=run)
        self.base = None

    async def step(self, batch: pa.Table) -> int:
        await self.rewriter(batch)
        return psutil.Process().memory_info().rss

    def heap_growth(self, top: int) -> list[str]:
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        if self.base is None:
            self.base = snapshot
            return []
        return [str(stat) for stat in snapshot.compare_to(self.base, "traceback")[:top]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_000)
    args = parser.parse_args()
    os.environ.setdefault("SOULRAY_PROBE_KEY", f"sk-probe-{uuid.uuid4().hex}")  # before Ray: workers inherit it
    with tempfile.TemporaryDirectory() as workdir:
        from run import synthetic_units  # bench/run.py, beside this script

        units = synthetic_units(args.rows, Path(workdir))
        source = Path(workdir) / "synthetic.parquet"  # where synthetic_units wrote them
        config = load_config(RegenerateConfig, None, [
            "rewrite.keys=[{name: local, api_key_env: SOULRAY_PROBE_KEY, rpm: 10000000, tpm: 10000000000, "
            "max_concurrent: 64}]", f"sources=[{{path: {source}}}]", f"storage.root={workdir}/out"])
        ray.init(num_cpus=4, include_dashboard=False)
        store = VersionStore(config.storage.root, config.dataset)
        with RewriteSession(config.rewrite, run_id=uuid.uuid4().hex[:12], store=store, s3=config.s3) as session:
            probe = _Probe.remote(config.rewrite, session.run)
            for start in range(0, units.num_rows, 32):
                rss = ray.get(probe.step.remote(units.slice(start, 32)))
                done = start + 32
                if done == 2048:
                    ray.get(probe.heap_growth.remote(0))
                if done % 2048 == 0:
                    print(f"{done} rows: actor RSS {rss / 1e6:.0f} MB", flush=True)
            print("Python heap growth since 2,048 rows:")
            for line in ray.get(probe.heap_growth.remote(12)):
                print(" ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
