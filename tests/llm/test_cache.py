"""The response cache: journals, the key index, lookups across journals, torn journals."""

import pytest

from soulray.fs import S3Config
from soulray.llm.cache import ResponseCache, build_index, call_key


def entry(index: int) -> dict:
    key = call_key([{"role": "user", "content": f"问题 {index}"}], "soulchat-v1", "gpt-3.5-turbo", {"temperature": 1.0}, 0)
    return {"call_key": key, "record_id": f"{index:032x}", "model": "gpt-3.5-turbo", "api_key_name": "a",
            "completion": f"用户：问{index}\n心理咨询师：答{index}", "finish_reason": "stop", "prompt_tokens": index,
            "completion_tokens": 2 * index, "cost_usd": 0.001 * index}


def test_journals_round_trip_through_the_index(tmp_path):
    root = str(tmp_path / "cache")
    writer = ResponseCache(root, "soulchat-v1", s3=S3Config(), journals_kept=2)
    for batch in range(5):  # five flushes: five journal files
        for index in range(batch * 10, batch * 10 + 10):
            writer.put(entry(index))
        assert writer.get(entry(batch * 10)["call_key"])["prompt_tokens"] == batch * 10  # visible before flush
        writer.flush()
    assert len(list((tmp_path / "cache" / "soulchat-v1").glob("journal-*.parquet"))) == 5

    index = build_index(root, "soulchat-v1", s3=S3Config())
    assert len(index) == 50 and len(index.files) == 5
    reader = ResponseCache(root, "soulchat-v1", s3=S3Config(), index=index, journals_kept=2)
    for number in (0, 49, 23, 7, 31):  # across journals, more than the two kept in memory
        assert reader.get(entry(number)["call_key"]) == entry(number)
    assert reader.get(call_key([{"role": "user", "content": "从没问过"}], "soulchat-v1", "gpt-3.5-turbo", {"temperature": 1.0}, 0)) is None
    assert len(reader.journals) == 2
    other = ResponseCache(root, "smile-v1", s3=S3Config())  # another prompt version sees nothing
    assert len(other.index) == 0 and other.get(entry(1)["call_key"]) is None


def test_torn_journal_is_skipped(tmp_path):
    root = str(tmp_path / "cache")
    writer = ResponseCache(root, "v", s3=S3Config())
    writer.put(entry(1))
    writer.flush()
    (tmp_path / "cache" / "v" / "journal-torn-000000.parquet").write_bytes(b"PAR1 half a file")
    index = build_index(root, "v", s3=S3Config())
    assert len(index) == 1 and ResponseCache(root, "v", s3=S3Config(), index=index).get(entry(1)["call_key"])


def test_keys_ending_in_zero_bytes_are_found():
    import numpy as np

    from soulray.llm.cache import CacheIndex

    keys = ["ab" * 19 + "00", "00" * 20, "ff" * 19 + "00", "12" * 20]
    packed = np.sort(np.array([bytes.fromhex(k) for k in keys], dtype="S20"))
    index = CacheIndex(packed, np.zeros(len(keys), dtype=np.int32), ["journal"])
    assert all(index.find(key) == "journal" for key in keys)
    assert index.find("ab" * 20) is None


@pytest.mark.parametrize("row_group", [16_384, 10])  # one row group per file, or several per chunk of journals
def test_compaction_merges_small_journals_without_losing_an_entry(tmp_path, monkeypatch, row_group):
    from soulray.llm import cache
    from soulray.llm.cache import compact

    monkeypatch.setattr(cache, "ROW_GROUP", row_group)

    root = str(tmp_path / "cache")
    writer = ResponseCache(root, "v", s3=S3Config())
    for batch in range(30):  # one journal per batch, as a run of 30 batches leaves
        for index in range(batch * 4, batch * 4 + 4):
            writer.put(entry(index))
        writer.flush()
    assert compact(root, "v", s3=S3Config(), min_journals=31).journals_after == 30  # below the threshold
    report = compact(root, "v", s3=S3Config(), min_journals=10, target_bytes=40_000)
    files = list((tmp_path / "cache" / "v").glob("*.parquet"))
    assert report.journals_before == 30 and report.entries == 120
    assert 1 <= report.journals_after == len(files) < 30 and all(f.name.startswith("compact-") for f in files)
    index = build_index(root, "v", s3=S3Config())
    reader = ResponseCache(root, "v", s3=S3Config(), index=index)
    assert len(index) == 120 and all(reader.get(entry(n)["call_key"]) == entry(n) for n in range(120))


def test_a_journal_compacted_away_under_a_reader_is_a_miss_not_a_crash(tmp_path):
    from soulray.llm.cache import compact

    root = str(tmp_path / "cache")
    writer = ResponseCache(root, "v", s3=S3Config())
    for index in range(3):
        writer.put(entry(index))
        writer.flush()
    stale = ResponseCache(root, "v", s3=S3Config())  # its index names the three journals
    compact(root, "v", s3=S3Config(), min_journals=2)
    assert stale.get(entry(1)["call_key"]) is None
    assert ResponseCache(root, "v", s3=S3Config()).get(entry(1)["call_key"]) == entry(1)
