"""The store under test, on a local folder and on a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import pytest

from soulray.store import VersionStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> VersionStore:
    if request.param == "local":
        return VersionStore(str(tmp_path / "store"), "corpus")
    s3 = request.getfixturevalue("s3_config")
    return VersionStore(request.getfixturevalue("s3_bucket") + "/prefix", "corpus", s3=s3)
