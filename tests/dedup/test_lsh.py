"""LSH parameters as datasketch picks them; band keys that bucket exactly as datasketch's do."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from soulray.dedup.lsh import band_keys, optimal_params
from soulray.dedup.settings import DedupConfig


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_optimal_params_agree_with_datasketch(num_perm):
    thresholds = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95) if num_perm <= 128 else (0.8,)
    for threshold in thresholds:
        for weights in ((0.5, 0.5), (0.05, 0.95)):
            assert optimal_params(threshold, num_perm, weights) == _optimal_param(threshold, num_perm, *weights)


def test_config_uses_datasketch_choice_unless_given():
    # default weights favour recall (false negatives weigh 0.95): every candidate is checked by Jaccard
    assert DedupConfig(threshold=0.8, num_perm=128).lsh_params() == _optimal_param(0.8, 128, 0.05, 0.95) == (16, 8)
    assert DedupConfig(threshold=0.8, num_perm=128, weights=(0.5, 0.5)).lsh_params() == _optimal_param(0.8, 128, 0.5, 0.5)
    assert DedupConfig(bands=12, rows=10).lsh_params() == (12, 10)
    with pytest.raises(ValueError, match="both bands and rows"):
        DedupConfig(bands=16)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        DedupConfig(num_perm=128, bands=20, rows=8)


def test_band_keys_bucket_like_datasketch():
    """Rows sharing a band's values share its key, and only those: the same buckets as datasketch's
    byte keys (MinHashLSH._byteswap) on signatures with planted shared bands."""
    rng = np.random.default_rng(0)
    bands, rows = 8, 4
    signatures = rng.integers(0, 2**32, (200, bands * rows), dtype=np.uint64).astype(np.uint32)
    signatures[100:150, 8:12] = signatures[0, 8:12]  # 51 rows share band 2
    signatures[150:160] = signatures[1]  # 11 identical rows share every band
    keys = band_keys(signatures, bands=bands, rows=rows)
    for band in range(bands):
        ours = _groups(keys[:, band])
        theirs = _groups([bytes(signatures[i, band * rows:(band + 1) * rows].byteswap().data) for i in range(200)])
        assert ours == theirs
    assert len(_groups(keys[:, 2])) == 200 - 50 - 10 and len(_groups(keys[:, 0])) == 200 - 10


def _groups(keys) -> set[frozenset[int]]:
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key if isinstance(key, bytes) else int(key), set()).add(index)
    return {frozenset(group) for group in groups.values()}
