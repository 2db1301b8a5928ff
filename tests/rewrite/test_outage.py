"""A failing endpoint does not publish (issue 17, defect 7): above rewrite.max_failure_share of rows
failing for infrastructure reasons, the run refuses to publish, `latest` stays, and what was paid is in
the cache, so the rerun pays only for the rest."""

from __future__ import annotations

import json

import pytest

from soulray.cli import DEMO_CONFIG
from soulray.config import RegenerateConfig, load_config
from soulray.fs import S3Config
from soulray.llm.cache import build_index
from soulray.offline.server import Faults, SimulatedKey
from soulray.regenerate import run
from soulray.rewrite.stage import RewriteOutage, check_failures
from soulray.store import VersionStore
from soulray.store.manifest import Counts
from tests.conftest import TEST_API_KEYS, free_port

ROWS = 40


def counts(**rewrite: int) -> Counts:
    return Counts(input_rows=110, by_stage={"filter_source": {"too_short": 10}, "parse": {"too_few_turns": 30},
                                            "rewrite": rewrite})


def test_only_infrastructure_failures_count_against_the_rows_sent():
    check_failures(counts(retries_exhausted=5), max_share=0.05, paid_calls=95)  # 5 of 100 sent: at the limit
    check_failures(counts(budget_exhausted=90), max_share=0.05, paid_calls=10)  # the operator's own stop
    with pytest.raises(RewriteOutage, match=r"6 of 100 rows .*\(http_503 1, retries_exhausted 5\).* 94 calls paid"):
        check_failures(counts(retries_exhausted=5, http_503=1), max_share=0.05, paid_calls=94)
    with pytest.raises(RewriteOutage, match=r"\(batch_expired 6\)"):  # rewrite.mode batch: no answer had
        check_failures(counts(batch_expired=6), max_share=0.05, paid_calls=94)


def overrides(root, url: str, **extra: object) -> list[str]:
    keys = [{"name": "a", "api_key_env": "SOULRAY_TEST_KEY_A", "rpm": 100_000, "tpm": 10**8}]
    return [f"storage.root={root}", f"rewrite.base_url={url}", f"rewrite.keys={json.dumps(keys)}", f"limit={ROWS}",
            "filters.source=[]", "filters.dialogue=[]", "dedup.source.enabled=false", "dedup.dialogue.enabled=false",
            *[f"{key}={value}" for key, value in extra.items()]]


def test_an_outage_publishes_nothing_and_the_rerun_pays_only_the_rest(ray_local, llm, tmp_path):
    store = VersionStore(str(tmp_path), "smilechat-demo")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: every call fails to connect
    with pytest.raises(RewriteOutage, match=f"{ROWS} of {ROWS} rows .*retries_exhausted {ROWS}.* 0 calls paid"):
        run(load_config(RegenerateConfig, DEMO_CONFIG, overrides(tmp_path, dead, **{"rewrite.max_retries": 0})))
    assert store.latest() is None

    key = TEST_API_KEYS["SOULRAY_TEST_KEY_A"]
    flaky, url = llm(keys={key: SimulatedKey()}, faults=Faults(error_5xx=0.5), seed=7)
    with pytest.raises(RewriteOutage, match="rows sent to the rewrite"):
        run(load_config(RegenerateConfig, DEMO_CONFIG, overrides(tmp_path, url, **{"rewrite.max_retries": 0})))
    assert store.latest() is None
    paid = flaky.stats[key].completed
    assert 0 < paid < ROWS
    assert len(build_index(store.cache_uri(), "soulchat-v1", s3=S3Config())) == paid  # all that was paid is kept

    healthy, url = llm(keys={key: SimulatedKey()})
    result = run(load_config(RegenerateConfig, DEMO_CONFIG, overrides(tmp_path, url)))
    assert store.latest() == result.manifest.version
    assert len(build_index(store.cache_uri(), "soulchat-v1", s3=S3Config())) == paid + healthy.stats[key].completed
    assert healthy.stats[key].completed < ROWS  # the rows paid before were not paid again
