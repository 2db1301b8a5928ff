"""One place that turns a location (local path or s3://bucket/key) into a filesystem.

Credentials are resolved here, on whichever process calls it (driver or Ray worker), from the env-var
names in `S3Config` or the standard AWS chain. Callers pass `S3Config` (names only) across processes,
never a filesystem object: a pickled S3FileSystem would carry the secret inside Ray task specs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import Field

from soulray.errors import SoulrayError
from soulray.settings import EnvVarName, StrictModel


class S3Config(StrictModel):
    """How to reach S3 or an S3-compatible endpoint. Credentials come from the standard AWS chain
    (instance role, ~/.aws, AWS_* env vars) unless the names of other env vars are given here."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO/moto")
    region: str | None = None
    access_key_id_env: EnvVarName | None = None
    secret_access_key_env: EnvVarName | None = None
    session_token_env: EnvVarName | None = None
    profile: str | None = Field(None, description="a profile of the shared AWS credentials file")


@dataclass(frozen=True)
class Location:
    """A resolved location: a pyarrow filesystem and the path inside it."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(part.strip("/") for part in parts)])
        uri = "/".join([self.uri.rstrip("/"), *(part.strip("/") for part in parts)])
        return Location(self.filesystem, path, uri)


def resolve(uri: str, s3: S3Config | None = None) -> Location:
    """Resolve `uri` (a local path, file://… or s3://bucket/key) to a Location."""
    parsed = urlparse(uri)
    if parsed.scheme == "builtin":
        # Data shipped inside the package (the demo sample), so a fresh install runs with no files.
        local = str(Path(__file__).parent / "data" / uri.split(":", 1)[1].lstrip("/"))
        return Location(pafs.LocalFileSystem(), local, uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise SoulrayError(f"{uri}: an s3:// location needs a bucket name")
        path = f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
        return Location(s3_filesystem(s3 or S3Config()), path, uri.rstrip("/"))
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else uri
        absolute = os.path.abspath(os.path.expanduser(local))
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    raise SoulrayError(f"{uri}: unsupported location scheme {parsed.scheme!r} (use a local path or s3://)")


def s3_credentials(s3: S3Config) -> dict[str, str]:
    """Secrets named by `s3`, read from this process's environment. Empty: use the AWS default chain."""
    names = {
        "access_key": ("access_key_id_env", s3.access_key_id_env),
        "secret_key": ("secret_access_key_env", s3.secret_access_key_env),
        "session_token": ("session_token_env", s3.session_token_env),
    }
    resolved: dict[str, str] = {}
    for field, (config_key, env_name) in names.items():
        if env_name is None:
            continue
        value = os.environ.get(env_name)
        if not value:
            raise SoulrayError(f"s3.{config_key}: environment variable {env_name} is not set on this node")
        resolved[field] = value
    return resolved


@lru_cache(maxsize=16)
def s3_filesystem(s3: S3Config) -> pafs.S3FileSystem:
    kwargs: dict[str, object] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=8)}
    if s3.endpoint_url:
        endpoint = urlparse(s3.endpoint_url)
        kwargs["endpoint_override"] = endpoint.netloc or s3.endpoint_url
        kwargs["scheme"] = endpoint.scheme or "https"
    if s3.region:
        kwargs["region"] = s3.region
    if s3.profile:
        kwargs["profile"] = s3.profile
    kwargs.update(s3_credentials(s3))
    return pafs.S3FileSystem(**kwargs)


@lru_cache(maxsize=16)
def boto3_client(s3: S3Config):
    """A boto3 S3 client for what pyarrow cannot do (conditional puts). Retries throttling and 5xx."""
    import boto3
    from botocore.config import Config

    credentials = s3_credentials(s3)
    session = boto3.session.Session(profile_name=s3.profile) if s3.profile else boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=credentials.get("access_key"),
        aws_secret_access_key=credentials.get("secret_key"),
        aws_session_token=credentials.get("session_token"),
        config=Config(retries={"max_attempts": 8, "mode": "standard"}),
    )
