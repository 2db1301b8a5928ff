"""Small-object operations the commit protocol needs, on a local folder or S3.

pyarrow's filesystems write the shards; they cannot send conditional headers, so manifests and the
`latest` pointer go through here: `put_if_absent` (S3 `If-None-Match: *`, local exclusive link) and
`put_if_match` (S3 `If-Match: <etag>`, local lock + compare + atomic rename).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from soulray.config import S3Config
from soulray.errors import StoreError, VersionConflict
from soulray.fs import boto3_client


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
        return self.root / key

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            content = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return content, hashlib.sha256(content).hexdigest()

    def _write_temp(self, path: Path, content: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
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


class S3Backend(Backend):
    def __init__(self, root: str, s3: S3Config) -> None:
        parsed = urlparse(root)
        self.uri = root.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = boto3_client(s3)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise _s3_error(exc, self.child_uri(key)) from None
        return response["Body"].read(), response["ETag"]

    def put_if_absent(self, key: str, content: bytes) -> None:
        if not self._conditional_put(key, content, IfNoneMatch="*"):
            raise VersionConflict(f"{self.child_uri(key)} already exists: another run published it first")

    def put_if_match(self, key: str, content: bytes, etag: str | None) -> bool:
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        return self._conditional_put(key, content, **condition)

    def _conditional_put(self, key: str, content: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=content, **condition)
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write to the same key won.
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise _s3_error(exc, self.child_uri(key)) from None
        return True

    def list(self, prefix: str) -> list[StoredObject]:
        from botocore.exceptions import ClientError

        objects = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                for item in page.get("Contents", []):
                    objects.append(StoredObject(item["Key"][strip:], item["Size"],
                                                item["LastModified"].timestamp()))
        except ClientError as exc:
            raise _s3_error(exc, self.child_uri(prefix)) from None
        return objects

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _s3_error(exc, self.child_uri(key)) from None


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _s3_error(exc: Exception, uri: str) -> StoreError:
    """A StoreError that says what went wrong without echoing request details (no credentials)."""
    code = _code(exc)
    if code in ("NoSuchBucket",):
        return StoreError(f"{uri}: the bucket does not exist")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
        return StoreError(f"{uri}: S3 refused the credentials ({code}); check the env vars named in the s3 "
                          "config section or the AWS credential chain on this node")
    return StoreError(f"{uri}: S3 error {code or type(exc).__name__}")
