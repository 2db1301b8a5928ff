"""Small-object operations the commit protocol needs, on a local folder or S3.

pyarrow's filesystems write the shards; they cannot send conditional headers, so manifests and the
`latest` pointer go through here: `put_if_absent` (S3 `If-None-Match: *`, local exclusive link) and
`put_if_match` (S3 `If-Match: <etag>`, local lock + compare + atomic rename), and `lock`, which
serialises a dataset's commits (local `flock`; on S3 a lock object created with `If-None-Match: *`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from soulray.errors import StoreError, VersionConflict
from soulray.fs import S3Config, boto3_client

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: float  # seconds since the epoch


class Backend:
    """Keys are '/'-separated paths relative to the store root."""

    uri: str

    def read(self, key: str) -> tuple[bytes, str] | None:
        """(content, etag), or None when absent."""
        raise NotImplementedError

    def put_if_absent(self, key: str, content: bytes) -> None:
        """Create `key`; VersionConflict when it already exists."""
        raise NotImplementedError

    def put_if_match(self, key: str, content: bytes, etag: str | None) -> bool:
        """Replace `key` only if its etag is still `etag` (None: only if absent). False when it moved."""
        raise NotImplementedError

    def list(self, prefix: str) -> list[StoredObject]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def lock(self, key: str, *, owner: str, lease_s: float) -> AbstractContextManager[None]:
        """Hold the exclusive lock named `key` for a `with` block. A holder that dies frees it (locally
        at once; on S3 when the lock is older than `lease_s`)."""
        raise NotImplementedError

    def child_uri(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


def open_backend(root: str, s3: S3Config) -> Backend:
    if urlparse(root).scheme == "s3":
        return S3Backend(root, s3)
    return LocalBackend(root)


class LocalBackend(Backend):
    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root.removeprefix("file://"))))
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = Path(os.path.normpath(self.root / key))
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"{key}: outside the store root {self.root}")
        return path

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            content = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return content, hashlib.sha256(content).hexdigest()

    def _write_temp(self, path: Path, content: bytes) -> Path:
        """A new file beside `path`, created like any file the user writes (0666 less the umask, as
        pyarrow creates shards): mkstemp's 0600 would lock other readers out of the manifest."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        return temp

    def put_if_absent(self, key: str, content: bytes) -> None:
        path = self._path(key)
        temp = self._write_temp(path, content)
        try:
            os.link(temp, path)  # atomic and exclusive: fails if the name exists
        except FileExistsError:
            raise VersionConflict(f"{path} already exists: another run published it first") from None
        finally:
            os.unlink(temp)

    def put_if_match(self, key: str, content: bytes, etag: str | None) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read(key)
            if (current[1] if current else None) != etag:
                return False
            os.replace(self._write_temp(path, content), path)
            return True

    def list(self, prefix: str) -> list[StoredObject]:
        base = self._path(prefix)
        if not base.exists():
            return []
        objects = []
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".lock"):
                stat = path.stat()
                objects.append(StoredObject(str(path.relative_to(self.root)), stat.st_size, stat.st_mtime))
        return objects

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextmanager
    def lock(self, key: str, *, owner: str, lease_s: float) -> Iterator[None]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:  # a '.lock' name: list() never shows it
            fcntl.flock(handle, fcntl.LOCK_EX)  # the kernel releases it if this process dies
            yield


class S3Backend(Backend):
    def __init__(self, root: str, s3: S3Config) -> None:
        from botocore.exceptions import BotoCoreError

        parsed = urlparse(root)
        self.uri = root.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        try:
            self.client = boto3_client(s3)
        except BotoCoreError as exc:  # e.g. s3.profile names no profile
            raise StoreError(f"{self.uri}: cannot set up the S3 client: {exc}") from None
        self.endpoint = _without_secrets(self.client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, key: str, *, expected: tuple[str, ...] = (), **kwargs: object) -> dict | None:
        """One S3 request on `key`; None when S3 answers with an error code in `expected`. Every other
        failure becomes one StoreError line (see `_error`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            if _code(exc) in expected:
                return None
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    def read(self, key: str) -> tuple[bytes, str] | None:
        response = self._call("get_object", key, expected=("NoSuchKey", "404"))
        return (response["Body"].read(), response["ETag"]) if response else None

    def put_if_absent(self, key: str, content: bytes) -> None:
        if not self._conditional_put(key, content, IfNoneMatch="*"):
            raise VersionConflict(f"{self.child_uri(key)} already exists: another run published it first")

    def put_if_match(self, key: str, content: bytes, etag: str | None) -> bool:
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        return self._conditional_put(key, content, **condition)

    def _conditional_put(self, key: str, content: bytes, **condition: str) -> bool:
        # 412: the condition failed; 409: a concurrent conditional write to the same key won.
        lost = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
        return self._call("put_object", key, expected=lost, Body=content, **condition) is not None

    def list(self, prefix: str) -> list[StoredObject]:
        from botocore.exceptions import BotoCoreError, ClientError

        objects = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                for item in page.get("Contents", []):
                    objects.append(StoredObject(item["Key"][strip:], item["Size"],
                                                item["LastModified"].timestamp()))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix) from None
        return objects

    def delete(self, key: str) -> None:
        self._call("delete_object", key)

    @contextmanager
    def lock(self, key: str, *, owner: str, lease_s: float) -> Iterator[None]:
        """A lock object created only if absent. Its age is judged by the clock of the run waiting for
        it: cluster nodes agree to within seconds, and the lease is minutes."""
        delay = 0.05
        while True:
            token = _lock_token(owner)
            if self._conditional_put(key, token, IfNoneMatch="*"):
                break
            held = self.read(key)
            if held is not None and _lock_age_s(held[0]) > lease_s and self._conditional_put(key, token,
                                                                                            IfMatch=held[1]):
                log.warning("%s: took over a lock held longer than %.0fs (%s)", self.child_uri(key), lease_s,
                            held[0].decode(errors="replace"))
                break
            time.sleep(delay * (0.5 + random.random()))
            delay = min(2.0, delay * 2)
        try:
            yield
        finally:
            held = self.read(key)
            if held is not None and held[0] == token:
                self.delete(key)

    def _error(self, exc: Exception, key: str) -> StoreError:
        """One line naming the object, the bucket, the endpoint and what to set. Never botocore's own
        text: it can carry request details; nothing here can carry a credential."""
        from botocore.exceptions import ConnectionError, NoCredentialsError, PartialCredentialsError

        where = f"{self.child_uri(key)} (bucket {self.bucket} at {self.endpoint})"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"{where}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              "name other env vars in s3.access_key_id_env / s3.secret_access_key_env, or a "
                              "profile in s3.profile")
        if isinstance(exc, ConnectionError):
            return StoreError(f"{where}: cannot reach the S3 endpoint ({type(exc).__name__}): set s3.endpoint_url "
                              "(--s3-endpoint for inspect, export and gc) to a reachable endpoint, or leave it "
                              "unset for AWS")
        code = _code(exc)
        if code == "NoSuchBucket":
            return StoreError(f"{where}: the bucket does not exist: create it, or set storage.root (--output, "
                              "--root) to an existing bucket")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
            return StoreError(f"{where}: S3 refused the credentials ({code}): set s3.access_key_id_env / "
                              "s3.secret_access_key_env (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, s3.profile) "
                              "to credentials allowed on this bucket")
        return StoreError(f"{where}: S3 error {code or type(exc).__name__}")


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _without_secrets(url: str) -> str:
    """The endpoint as messages show it: scheme, host, port and path (no userinfo, no query)."""
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port}" if parsed.port else (parsed.hostname or "")
    return f"{parsed.scheme}://{host}{parsed.path}" if parsed.scheme else url


def _lock_token(owner: str) -> bytes:
    return json.dumps({"owner": owner, "since": time.time()}).encode()


def _lock_age_s(token: bytes) -> float:
    try:
        return time.time() - float(json.loads(token)["since"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # not a lock this code wrote: treat as abandoned
