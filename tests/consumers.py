"""How people read a published version without soulray: Hugging Face `datasets` (what most fine-tuning
tools call), polars and pyarrow, each pointed at the version's Parquet files (local files only: the
tests run with HF_HUB_OFFLINE=1)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from soulray.schema import DIALOGUE, REJECT
from soulray.store import Version


def assert_readable_by_consumers(version: Version, *, cache: Path, data_schema: pa.Schema = DIALOGUE) -> dict[str, list[dict]]:
    """Load the version's data and rejects with `load_dataset("parquet", data_files=…/*.parquet)`,
    polars and pyarrow; every reader sees every row, in the version's schema. Returns the first rows
    `datasets` gave, per kind."""
    import datasets

    folder = version.uris("data")[0].rsplit("/data/", 1)[0]
    counts = version.manifest.counts
    first = {}
    for kind, schema, rows in (("data", data_schema, counts.output_rows),
                               ("rejects", REJECT, counts.rejected_rows)):
        files = f"{folder}/{kind}/*.parquet"
        loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache / kind))
        assert loaded.num_rows == rows > 0 and loaded.column_names == schema.names
        assert pl.read_parquet(files).height == rows
        table = pq.read_table(f"{folder}/{kind}")
        assert table.num_rows == rows and table.schema.remove_metadata() == schema
        first[kind] = loaded.select(range(min(rows, 5))).to_list()
    return first
