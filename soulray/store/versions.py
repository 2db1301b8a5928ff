"""The versioned store: `<root>/<dataset>/versions/<version>/{data/, rejects/, manifest.json}`.

Commit protocol (a crash at any point leaves no version or a whole one):
1. shards and report files are written under the version folder, named with the run id, so a run never
   writes a file another run's manifest lists;
2. commits to a dataset take turns (`<dataset>/commit.lock`). In its turn a commit reads `latest`: that
   version is its parent. The manifest is then created only if absent (S3 `If-None-Match: *`; locally
   an exclusive link), so of two runs publishing the same version exactly one wins, and its existence is
   what makes the version exist;
3. `<dataset>/latest.json` moves to it by compare-and-swap against what was read in 2 (S3 `If-Match`;
   locally lock + compare). So the lineage is one chain and `latest` follows commit order.
Readers open a version through its manifest, never by listing. `gc` removes files no manifest names.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from soulray.errors import StoreError, VersionConflict
from soulray.fs import S3Config
from soulray.settings import DATASET_NAME, VERSION_NAME
from soulray.store.backend import Backend, StoredObject, open_backend
from soulray.store.manifest import Manifest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest.json"
COMMIT_LOCK = "commit.lock"
# A commit holds the dataset's lock for seconds (the diff against the parent, the report); a lock this
# old belongs to a run that died while committing, which S3, unlike a local flock, cannot notice.
COMMIT_LEASE_S = 300.0


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
        self.root, self.dataset, self.s3 = root.rstrip("/"), check_name("dataset", dataset, DATASET_NAME), s3
        self.backend: Backend = open_backend(root, s3)

    # -- locations --------------------------------------------------------------------------------
    def _version_key(self, version: str) -> str:
        return f"{self.dataset}/versions/{check_name('version', version, VERSION_NAME)}"

    def _manifest_key(self, version: str) -> str:
        return f"{self._version_key(version)}/{MANIFEST}"

    def version_uri(self, version: str) -> str:
        return self.backend.child_uri(self._version_key(version))

    def cache_uri(self) -> str:
        """Where the rewrite stage keeps its response cache: beside the versions, same root."""
        return self.backend.child_uri(f"{self.dataset}/cache")

    # -- commit -----------------------------------------------------------------------------------
    def require_new(self, version: str) -> None:
        """VersionConflict if `version` is published already, so a run that names its version learns it
        before spending anything. Also a run's first request to the store: a missing bucket or missing
        credentials fail here, on the driver, before Ray starts."""
        if self.backend.read(self._manifest_key(version)) is not None:
            raise VersionConflict(f"{self.version_uri(version)} already exists: choose another storage.version")

    def commit(self, manifest: Manifest, *, finish: Callable[[Manifest], Manifest] | None = None) -> Manifest:
        """Publish `manifest` and return it as committed: with the version that was latest at commit
        time as its parent, the commit time as `created_at`, and whatever `finish` adds that depends on
        the parent (changes, report). VersionConflict if this version is published already; nothing is
        written under it then."""
        with self.backend.lock(f"{self.dataset}/{COMMIT_LOCK}", owner=manifest.run_id, lease_s=COMMIT_LEASE_S):
            self.require_new(manifest.version)
            current = self.backend.read(f"{self.dataset}/{LATEST}")
            parent = json.loads(current[0])["version"] if current else None
            manifest = manifest.model_copy(update={"parent_version": parent, "created_at": utc_now()})
            if finish is not None:
                manifest = finish(manifest)
            self.backend.put_if_absent(self._manifest_key(manifest.version), manifest.to_json())
            self._move_latest(manifest, etag=current[1] if current else None)
        return manifest

    def _move_latest(self, manifest: Manifest, *, etag: str | None) -> None:
        pointer = json.dumps({"version": manifest.version, "created_at": manifest.created_at}).encode()
        if self.backend.put_if_match(f"{self.dataset}/{LATEST}", pointer, etag):
            return
        # Only after a lock was taken over from a commit that stalled past the lease but then went on:
        # `latest` moved since this commit read its parent. Latest still follows commit order.
        log.warning("%s: latest moved during the commit of %s (a stalled commit finished meanwhile); its "
                    "recorded parent %s is not the version before it", self.backend.child_uri(self.dataset),
                    manifest.version, manifest.parent_version)
        for _ in range(20):
            current = self.backend.read(f"{self.dataset}/{LATEST}")
            if self.backend.put_if_match(f"{self.dataset}/{LATEST}", pointer, current[1] if current else None):
                return
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
        found = self.backend.read(self._manifest_key(version))
        if found is None:
            raise StoreError(f"{self.version_uri(version)}: no such version (no manifest)")
        try:
            return Manifest.model_validate_json(found[0])
        except ValidationError as exc:  # truncated, hand-edited or forged (a listed path outside the version)
            raise StoreError(f"{self.version_uri(version)}/{MANIFEST}: not a valid manifest: "
                             f"{exc.errors()[0]['msg']}") from None

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
                if not candidate.key.startswith(prefix):  # the listing is under it; deleting never leaves it
                    raise StoreError(f"{candidate.key}: gc found a file outside {prefix}; deleting nothing more")
                self.backend.delete(candidate.key)
        return candidates

    def _referenced(self, version: str, objects: list[StoredObject]) -> set[str]:
        key = self._version_key(version)
        if not any(obj.key == f"{key}/{MANIFEST}" for obj in objects):
            return set()
        manifest = self.manifest(version)
        return {f"{key}/{MANIFEST}"} | {f"{key}/{shard.path}" for shard in manifest.data + manifest.rejects + manifest.report}


def check_name(kind: str, name: str, pattern: str) -> str:
    """`name` if it is a valid dataset or version name (one path segment: see soulray.settings)."""
    if not re.fullmatch(pattern, name):
        raise StoreError(f"{name!r}: not a valid {kind} name (letters, digits and ._-, starting with a letter "
                         "or digit)")
    return name


def store_for_path(path: str, s3: S3Config = S3Config()) -> tuple[VersionStore, str]:
    """A version given as a path (…/<dataset>/versions/<version>[/manifest.json]) → (store, version)."""
    parts = path.rstrip("/").removesuffix(f"/{MANIFEST}").split("/")
    if len(parts) < 4 or parts[-2] != "versions":
        raise StoreError(f"{path}: not a version path (expected <root>/<dataset>/versions/<version>)")
    root = "/".join(parts[:-3]) or "/"
    if not path.startswith("s3://"):
        root = str(Path(root))
    return VersionStore(root, parts[-3], s3=s3), parts[-1]
