"""The versioned store: Parquet shards plus a manifest committed last, on a local folder or S3."""

from soulray.store.manifest import InputFile, Manifest, Shard
from soulray.store.publish import attach_report, build_manifest, changes_since, publish, write_shards
from soulray.store.reader import Version, open_version
from soulray.store.shards import ShardTarget
from soulray.store.versions import VersionStore, new_version_id

__all__ = ["InputFile", "Manifest", "Shard", "ShardTarget", "Version", "VersionStore", "attach_report",
           "build_manifest", "changes_since",
           "new_version_id", "open_version", "publish", "write_shards"]
