"""Train / validation split by question_id."""

from __future__ import annotations

import pyarrow as pa

from soulray.train.split import is_validation, split_by_question, split_key, split_manifest


def test_answers_to_one_question_stay_together(smilechat):
    train, validation = split_by_question(smilechat, validation_share=0.2, seed=3)
    assert train.num_rows + validation.num_rows == smilechat.num_rows
    assert validation.num_rows > 0 and train.num_rows > 0
    assert not set(train.column("question_id").to_pylist()) & set(validation.column("question_id").to_pylist())
    # the SMILECHAT sample has questions with several answers: the split must have kept some together
    held = validation.column("question_id").to_pylist()
    assert len(held) > len(set(held))


def test_split_is_deterministic_and_order_free(smilechat):
    shuffled = smilechat.take(list(reversed(range(smilechat.num_rows))))
    _, first = split_by_question(smilechat, validation_share=0.2, seed=3)
    _, second = split_by_question(shuffled, validation_share=0.2, seed=3)
    _, other_seed = split_by_question(smilechat, validation_share=0.2, seed=4)
    assert sorted(first.column("record_id").to_pylist()) == sorted(second.column("record_id").to_pylist())
    assert sorted(first.column("record_id").to_pylist()) != sorted(other_seed.column("record_id").to_pylist())


def test_split_file_lets_anyone_recompute_the_held_out_questions(smilechat):
    train, validation = split_by_question(smilechat, validation_share=0.2, seed=3)
    manifest = split_manifest(train=train, validation=validation, seed=3, validation_share=0.2,
                              source={"dataset": "smile", "version": "v1"})
    held = set(manifest["validation"]["question_ids"])
    recomputed = {q for q in smilechat.column("question_id").to_pylist()
                  if is_validation(split_key(q, None), seed=manifest["seed"], validation_share=manifest["validation_share"])}
    assert held == recomputed
    assert manifest["counts"]["validation_dialogues"] == validation.num_rows == len(manifest["validation"]["record_ids"])


def test_rows_without_question_id_split_by_record():
    table = pa.table({"question_id": [None, ""], "record_id": ["r1", "r2"], "id": [1, 2]})
    train, validation = split_by_question(table, validation_share=0.5, seed=0)
    assert train.num_rows + validation.num_rows == 2
    assert split_key(None, "r1") == "record:r1" and split_key("", "r2") == "record:r2"
