"""The store's settings: where versions are published and how they are sharded (`storage`). How S3 is
reached (`s3`) is soulray/fs.py's S3Config, shared by every stage that reads or writes a location."""

from __future__ import annotations

from pydantic import Field

from soulray.settings import VERSION_NAME, StrictModel


class StorageConfig(StrictModel):
    root: str = Field("output", description="a local folder or s3://bucket/prefix")
    version: str | None = Field(None, pattern=VERSION_NAME,
                                description="version id to publish (default: UTC time + run id)")
    rows_per_shard: int = Field(50_000, ge=1, description="rows handed to one shard writer")
    max_shard_mb: int = Field(256, ge=1, description="split a writer's rows into shards under this size")
