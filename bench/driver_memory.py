"""What the driver keeps per block of a long pipeline (issue 22: the 1M run's driver grew 310 -> 924 MB,
~0.33 KB a row). A Ray Data pipeline of N small blocks (32 rows, as the rewrite's batches) is run three ways on
a local Ray of its own, each in a fresh process, and the driver's RSS growth is divided by N:

    iterate   the blocks are read and dropped (what executing the pipeline itself costs the driver)
    hold      dedup's `_hold` keeps them (joined into ~8 MB blocks): the held copies pin their lineage
    lineage   `_hold` again, with Ray's max_lineage_bytes at 8 MB (lineage past it is evicted)

    python bench/driver_memory.py                 # 8,000 blocks, each way (~6 min on 2 cores)
    python bench/driver_memory.py --blocks 20000
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("iterate", "hold", "lineage")


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def one(mode: str, blocks: int) -> dict:
    import pyarrow as pa
    import ray

    from soulray.dedup.stage import _hold  # imported before the first measure, in every way

    system = {"max_lineage_bytes": 8_000_000} if mode == "lineage" else {}
    ray.init(num_cpus=4, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False,
             _system_config=system)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def fill(batch: pa.Table) -> pa.Table:
        return pa.table({"record_id": pa.array([f"r{i}" for i in batch["id"].to_numpy()]),
                         "text": pa.array(["x" * 300] * batch.num_rows)})

    ds = ray.data.range(blocks * 32, override_num_blocks=blocks).map_batches(fill, batch_format="pyarrow",
                                                                             batch_size=None)
    gc.collect()
    before = rss_mb()
    if mode == "iterate":
        rows = sum(bundle.num_rows() for bundle in ds.iter_internal_ref_bundles())
        held_blocks = 0
    else:
        held = _hold(ds)
        rows, held_blocks = held.count(), held.num_blocks()
    gc.collect()
    grew = rss_mb() - before
    return {"mode": mode, "blocks": blocks, "rows": rows, "held_blocks": held_blocks, "driver_mb": round(grew, 1),
            "kb_per_block": round(grew * 1024 / blocks, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8_000)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one way, in this process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one(args.mode, args.blocks)))
        return
    print("| way | blocks in | held blocks | driver growth | per block in |\n|---|---|---|---|---|")
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--blocks", str(args.blocks)], cwd=ROOT,
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {result['blocks']:,} | {result['held_blocks']:,} | {result['driver_mb']:.0f} MB | "
              f"{result['kb_per_block']:.1f} KB |", flush=True)


if __name__ == "__main__":
    main()
