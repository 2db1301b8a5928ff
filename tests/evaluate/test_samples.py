"""Held-out samples: disjoint from training by question, the same on every run for a seed."""

from __future__ import annotations

import pyarrow.compute as pc

from soulray.evaluate.samples import hash_split, listed_split, next_turn_samples
from soulray.train.split import split_by_question, split_manifest


def test_held_out_questions_are_exactly_the_fine_tuning_validation_side(dialogues):
    train, validation = split_by_question(dialogues, validation_share=0.2, seed=7)
    manifest = split_manifest(train=train, validation=validation, seed=7, validation_share=0.2, source={})
    for held_out in (hash_split(validation_share=0.2, seed=7), listed_split(manifest)):
        samples = next_turn_samples(dialogues, held_out=held_out, limit=None, seed=0)
        sampled_questions = set(samples["question_id"].to_pylist())
        assert sampled_questions and sampled_questions <= set(validation["question_id"].to_pylist())
        assert not sampled_questions & set(train["question_id"].to_pylist())  # no question on both sides
        assert set(samples["record_id"].to_pylist()) <= set(validation["record_id"].to_pylist())


def test_questions_with_several_answers_stay_on_one_side(dialogues):
    shared = [q for q, n in zip(*pc.value_counts(dialogues["question_id"]).flatten(), strict=True) if n.as_py() > 1]
    assert len(shared) > 10  # the sample keeps whole question groups, as PsyQA has them
    held_out = hash_split(validation_share=0.3, seed=1)
    for question in (q.as_py() for q in shared):
        sides = {held_out(question, record) for record in
                 dialogues.filter(pc.equal(dialogues["question_id"], question))["record_id"].to_pylist()}
        assert len(sides) == 1


def test_samples_are_next_counselor_turns_chosen_by_seed(dialogues):
    everything = next_turn_samples(dialogues, held_out=lambda q, r: True, limit=None, seed=0)
    rows = everything.to_pylist()
    assert len({row["sample_id"] for row in rows}) == len(rows)
    by_record = {row["record_id"]: row["messages"] for row in dialogues.to_pylist()}
    for row in rows:
        messages = by_record[row["record_id"]]
        assert row["history"] == messages[:row["turn"]] and row["history"][-1]["role"] == "user"
        assert row["reference"] == messages[row["turn"]]["content"] and messages[row["turn"]]["role"] == "assistant"
    expected = sum(1 for m in by_record.values() for t in range(1, len(m))
                   if m[t]["role"] == "assistant" and m[t - 1]["role"] == "user" and m[t]["content"].strip())
    assert len(rows) == expected

    first = next_turn_samples(dialogues, held_out=lambda q, r: True, limit=50, seed=0)
    assert first.equals(next_turn_samples(dialogues, held_out=lambda q, r: True, limit=50, seed=0))
    # the choice depends on the seed and the sample ids only, not on the order rows arrive in
    assert set(first["sample_id"].to_pylist()) == set(
        next_turn_samples(_reversed(dialogues), held_out=lambda q, r: True, limit=50, seed=0)["sample_id"].to_pylist())
    other = next_turn_samples(dialogues, held_out=lambda q, r: True, limit=50, seed=1)
    assert set(first["sample_id"].to_pylist()) != set(other["sample_id"].to_pylist())


def _reversed(table):
    return table.take(list(range(table.num_rows - 1, -1, -1)))
