import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from soulray.sources.synthetic import TOPICS, generate, write_synthetic


def test_same_seed_same_bytes(tmp_path):
    write_synthetic(tmp_path / "a.parquet", 3000, seed=7, chunk_rows=1000)
    write_synthetic(tmp_path / "b.parquet", 3000, seed=7, chunk_rows=1000)
    write_synthetic(tmp_path / "c.parquet", 3000, seed=8, chunk_rows=1000)
    digest = [hashlib.sha256((tmp_path / f"{n}.parquet").read_bytes()).hexdigest() for n in "abc"]
    assert digest[0] == digest[1] != digest[2]


def test_shape_topics_and_duplicates():
    table = pa.concat_tables(generate(5000, seed=1, near_duplicate_rate=0.2, chunk_rows=2000))
    assert table.num_rows == 5000
    assert set(pc.unique(table["topic"]).to_pylist()) <= set(TOPICS)
    answers_per_question = pc.value_counts(table["question_id"]).field("counts")
    assert pc.max(answers_per_question).as_py() > 1  # several answers per question, as in PsyQA
    assert pc.count_distinct(table["answer_id"]).as_py() == 5000


def near_duplicate_share(table: pa.Table) -> float:
    """Share of answers within 3 substituted characters of another answer of the same length."""
    by_length: dict[int, list[str]] = {}
    for answer in table["answer"].to_pylist():
        by_length.setdefault(len(answer), []).append(answer)
    near = 0
    for group in by_length.values():
        for index, answer in enumerate(group):
            if any(0 < sum(a != b for a, b in zip(answer, other, strict=False)) <= 3
                   for other_index, other in enumerate(group) if other_index != index):
                near += 1
    return near / table.num_rows


def test_near_duplicate_rate_is_controllable():
    none = pa.concat_tables(generate(3000, seed=2, near_duplicate_rate=0.0))
    some = pa.concat_tables(generate(3000, seed=2, near_duplicate_rate=0.2))
    assert near_duplicate_share(none) < 0.02
    assert near_duplicate_share(some) > 0.2  # each near-duplicate pairs with its original
