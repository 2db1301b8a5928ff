"""Reading a published version through its manifest: as a pyarrow dataset, a polars frame or a Ray
Dataset, optionally verifying every shard's SHA-256 first."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from soulray.errors import StoreError
from soulray.fs import S3Config, resolve
from soulray.store.manifest import Manifest, Shard
from soulray.store.versions import VersionStore, store_for_path

if TYPE_CHECKING:
    import polars as pl
    import ray.data


@dataclass(frozen=True)
class Version:
    store: VersionStore
    manifest: Manifest

    def uris(self, kind: str = "data") -> list[str]:
        base = self.store.version_uri(self.manifest.version)
        return [f"{base}/{shard.path}" for shard in self._shards(kind)]

    def _shards(self, kind: str) -> list[Shard]:
        if kind not in ("data", "rejects"):
            raise StoreError(f"unknown shard kind {kind!r} (data or rejects)")
        return self.manifest.data if kind == "data" else self.manifest.rejects

    def verify(self) -> int:
        """Check every file the manifest lists (data, rejects, report) against its size and SHA-256;
        StoreError naming each one that is missing or differs. Returns how many files were checked."""
        base = self.store.version_uri(self.manifest.version)
        listed = self.manifest.data + self.manifest.rejects + self.manifest.report
        problems = []
        for shard in listed:
            try:
                _check(f"{base}/{shard.path}", sha256=shard.sha256, size=shard.bytes, s3=self.store.s3)
            except StoreError as exc:
                problems.append(str(exc))
        if problems:
            raise StoreError(f"{len(problems)} of the {len(listed)} files of {base} do not match its manifest: "
                             + "; ".join(problems))
        return len(listed)

    def to_arrow_dataset(self, kind: str = "data") -> pads.Dataset:
        locations = [resolve(uri, self.store.s3) for uri in self.uris(kind)]
        if not locations:
            return pads.dataset(self._empty(kind))
        return pads.dataset([loc.path for loc in locations], filesystem=locations[0].filesystem, format="parquet")

    def to_table(self, kind: str = "data") -> pa.Table:
        return self.to_arrow_dataset(kind).to_table()

    def to_polars(self, kind: str = "data") -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_table(kind))

    def to_ray(self, kind: str = "data", *, verify: bool = False) -> ray.data.Dataset:
        """One read task per shard; each worker resolves S3 credentials itself (none travel in tasks)."""
        import ray.data

        items = [{"uri": uri, "rows": shard.rows, "bytes": shard.bytes, "sha256": shard.sha256}
                 for shard, uri in zip(self._shards(kind), self.uris(kind), strict=False)]
        if not items:
            return ray.data.from_arrow(self._empty(kind))
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_shards, fn_kwargs={"s3": self.store.s3, "verify": verify}, batch_size=1, batch_format="pyarrow"
        )

    def _empty(self, kind: str) -> pa.Table:
        columns = self.manifest.data_schema if kind == "data" else self.manifest.reject_schema
        return pa.table({column["name"]: pa.array([], pa.string()) for column in columns})


def open_version(version: str = "latest", *, root: str | None = None, dataset: str | None = None,
                 s3: S3Config = S3Config(), verify: bool = False) -> Version:
    """Open `version` ('latest', a version id with root+dataset, or a version path)."""
    if root is None or dataset is None:
        store, version = store_for_path(version, s3)
    else:
        store = VersionStore(root, dataset, s3=s3)
    opened = Version(store, store.manifest(version))
    if verify:
        opened.verify()
    return opened


def _check(uri: str, *, sha256: str, size: int, s3: S3Config) -> bytes:
    location = resolve(uri, s3)
    try:
        with location.filesystem.open_input_stream(location.path) as handle:
            content = handle.read()
    except OSError as exc:
        raise StoreError(f"{uri}: a file the manifest lists cannot be read: {exc}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256 or len(content) != size:
        raise StoreError(f"{uri}: checksum mismatch (manifest sha256 {sha256[:16]}…, {size} bytes; "
                         f"file sha256 {digest[:16]}…, {len(content)} bytes)")
    return content


def _read_shards(batch: pa.Table, *, s3: S3Config, verify: bool) -> pa.Table:
    tables = []
    for item in batch.to_pylist():
        if verify:
            content = _check(item["uri"], sha256=item["sha256"], size=item["bytes"], s3=s3)
            tables.append(pq.read_table(pa.BufferReader(content)))
        else:
            location = resolve(item["uri"], s3)
            tables.append(pq.read_table(location.path, filesystem=location.filesystem))
    return pa.concat_tables(tables)
