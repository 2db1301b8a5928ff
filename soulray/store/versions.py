"""The versioned store: `<root>/<dataset>/versions/<version>/{data/, rejects/, manifest.json}`.

Commit protocol (a crash at any point leaves no version or a whole one):
1. shards are written under the version folder, named with the run id;
2. the manifest is created only if absent (S3 `If-None-Match: *`; locally an exclusive link), so of two
   runs publishing the same version exactly one wins; its existence is what makes the version exist;
3. `<dataset>/latest.json` moves forward by compare-and-swap (S3 `If-Match`; locally lock + compare).
Readers open a version through its manifest, never by listing. `gc` removes shards no manifest names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from soulray.config import S3Config
from soulray.errors import StoreError
from soulray.store.backend import Backend, StoredObject, open_backend
from soulray.store.manifest import Manifest

MANIFEST = "manifest.json"
LATEST = "latest.json"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_version_id(run_id: str) -> str:
    """Sortable by time: 20261129T041500Z-<run id prefix>."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{run_id[:6]}"


@dataclass(frozen=True)
class GcCandidate:
    key: str
    size: int
    why: str


class VersionStore:
    def __init__(self, root: str, dataset: str, *, s3: S3Config = S3Config()) -> None:
        self.root, self.dataset, self.s3 = root.rstrip("/"), dataset, s3
        self.backend: Backend = open_backend(root, s3)

    # -- locations --------------------------------------------------------------------------------
    def _version_key(self, version: str) -> str:
        return f"{self.dataset}/versions/{version}"

    def version_uri(self, version: str) -> str:
        return self.backend.child_uri(self._version_key(version))

    def cache_uri(self) -> str:
        """Where the rewrite stage keeps its response cache: beside the versions, same root."""
        return self.backend.child_uri(f"{self.dataset}/cache")

    # -- commit -----------------------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> None:
        """Make `manifest.version` exist (VersionConflict if another run got there first), then move
        `latest` forward to it."""
        self.backend.put_if_absent(f"{self._version_key(manifest.version)}/{MANIFEST}", manifest.to_json())
        self.advance_latest(manifest)

    def advance_latest(self, manifest: Manifest) -> bool:
        """Point `latest` at `manifest` unless it already points at a newer version. Compare-and-swap:
        a concurrent writer makes us re-read and decide again, never overwrite blindly."""
        pointer = json.dumps({"version": manifest.version, "created_at": manifest.created_at}).encode()
        for _ in range(20):
            current = self.backend.read(f"{self.dataset}/{LATEST}")
            etag = current[1] if current else None
            if current is not None:
                latest = json.loads(current[0])
                if (latest["created_at"], latest["version"]) >= (manifest.created_at, manifest.version):
                    return False
            if self.backend.put_if_match(f"{self.dataset}/{LATEST}", pointer, etag):
                return True
        raise StoreError(f"{self.backend.child_uri(self.dataset)}/{LATEST}: could not update (too much contention)")

    # -- reading ----------------------------------------------------------------------------------
    def latest(self) -> str | None:
        current = self.backend.read(f"{self.dataset}/{LATEST}")
        return json.loads(current[0])["version"] if current else None

    def manifest(self, version: str = "latest") -> Manifest:
        if version == "latest":
            resolved = self.latest()
            if resolved is None:
                raise StoreError(f"{self.backend.child_uri(self.dataset)}: no published version yet")
            version = resolved
        found = self.backend.read(f"{self._version_key(version)}/{MANIFEST}")
        if found is None:
            raise StoreError(f"{self.version_uri(version)}: no such version (no manifest)")
        return Manifest.model_validate_json(found[0])

    def versions(self) -> list[str]:
        """Committed versions, oldest first (listing is for people; readers go through manifests)."""
        suffix = f"/{MANIFEST}"
        keys = [obj.key for obj in self.backend.list(f"{self.dataset}/versions/") if obj.key.endswith(suffix)]
        return sorted(key[: -len(suffix)].rsplit("/", 1)[-1] for key in keys)

    # -- garbage ----------------------------------------------------------------------------------
    def gc(self, *, min_age_s: float = 3600.0, delete: bool = False) -> list[GcCandidate]:
        """Shards that no manifest names (crashed runs, losers of a publish race), older than
        `min_age_s` so a run still writing is left alone. Never touches a committed version's files."""
        by_version: dict[str, list[StoredObject]] = {}
        prefix = f"{self.dataset}/versions/"
        for obj in self.backend.list(prefix):
            by_version.setdefault(obj.key[len(prefix):].split("/", 1)[0], []).append(obj)
        now, candidates = time.time(), []
        for version, objects in sorted(by_version.items()):
            keep = self._referenced(version, objects)
            for obj in objects:
                if obj.key in keep or now - obj.modified < min_age_s:
                    continue
                why = "uncommitted version" if not keep else "not in the manifest"
                candidates.append(GcCandidate(obj.key, obj.size, why))
        if delete:
            for candidate in candidates:
                self.backend.delete(candidate.key)
        return candidates

    def _referenced(self, version: str, objects: list[StoredObject]) -> set[str]:
        key = self._version_key(version)
        if not any(obj.key == f"{key}/{MANIFEST}" for obj in objects):
            return set()
        manifest = self.manifest(version)
        return {f"{key}/{MANIFEST}"} | {f"{key}/{shard.path}" for shard in manifest.data + manifest.rejects + manifest.report}


def store_for_path(path: str, s3: S3Config = S3Config()) -> tuple[VersionStore, str]:
    """A version given as a path (…/<dataset>/versions/<version>[/manifest.json]) → (store, version)."""
    parts = path.rstrip("/").removesuffix(f"/{MANIFEST}").split("/")
    if len(parts) < 4 or parts[-2] != "versions":
        raise StoreError(f"{path}: not a version path (expected <root>/<dataset>/versions/<version>)")
    root = "/".join(parts[:-3]) or "/"
    if not path.startswith("s3://"):
        root = str(Path(root))
    return VersionStore(root, parts[-3], s3=s3), parts[-1]
