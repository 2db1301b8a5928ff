"""Dialogue format: each rule on its own, and the SMILECHAT sample's known defects caught by name."""

from __future__ import annotations

import pytest

from soulray.filters.batch import batch_from_table
from soulray.filters.dialogue import DialogueFormat
from tests.filters.tables import dialogues, good_dialogue, smilechat, turns

FORMAT = DialogueFormat(min_turns=4, max_turns=20)


def reason_of(messages) -> str | None:
    drops = FORMAT.apply(batch_from_table(dialogues(messages), "dialogue")).drops
    return drops[0][0] if drops else None


def test_a_good_dialogue_passes():
    assert reason_of(good_dialogue(8)) is None


@pytest.mark.parametrize("messages, reason", [
    ([], "no_messages"),
    ([{"role": "system", "content": "你是咨询师"}] + good_dialogue(4), "unknown_role"),
    (turns("我好难过", "我该怎么办", start="user")[:1] + [{"role": "user", "content": "还在吗"}], "client_only"),
    (good_dialogue(3) + [{"role": "assistant", "content": "  "}], "empty_turn"),
    (good_dialogue(2) + good_dialogue(2)[1:], "repeated_role"),
    (turns("你好，我是咨询师", "你好", "说说看", "嗯", "好的", start="assistant")[:4], "not_starting_with_user"),
    (good_dialogue(5), "not_ending_with_counselor"),
    (good_dialogue(2), "turn_count"),
    (good_dialogue(4)[:3] + [{"role": "assistant", "content": "我明白。求助者：那我该怎么办？"}], "role_label_in_turn"),
    (good_dialogue(3) + [{"role": "assistant", "content": "I hope this helps you feel better."}], "english_in_last_turn"),
])
def test_each_rule_names_its_reason(messages, reason):
    assert reason_of(messages) == reason


def test_a_label_word_inside_a_sentence_is_prose():
    messages = good_dialogue(4)
    messages[3] = {"role": "assistant", "content": "这种态度仿佛在告诉来访者：你是需要被我帮助的。"}
    assert reason_of(messages) is None
    messages[3] = {"role": "assistant", "content": "我明白你的感受，这很正常。\n用户：那我该怎么办？"}
    assert reason_of(messages) == "role_label_in_turn"


def test_english_earlier_in_the_dialogue_is_fine():
    messages = good_dialogue(4)
    messages[1] = {"role": "assistant", "content": "有本书叫 The Body Keeps the Score，可以看看。"}
    assert reason_of(messages) is None


def test_details_say_where():
    table = dialogues(good_dialogue(2) + good_dialogue(2)[1:], good_dialogue(2),
                      [{"role": "system", "content": "x"}] + good_dialogue(4))
    drops = FORMAT.apply(batch_from_table(table, "dialogue")).drops
    assert drops == {0: ("repeated_role", "turns 2 and 3 are both assistant"),
                     1: ("turn_count", "2 turns, outside 4-20"),
                     2: ("unknown_role", "turn 1 has role 'system' (expected user or assistant)")}


def test_smilechat_known_defects_are_caught():
    table = smilechat()
    messages = table["messages"].to_pylist()
    one_exchange = {index for index, turns_ in enumerate(messages) if len(turns_) <= 2}
    repeated = {index for index, turns_ in enumerate(messages)
                if any(a["role"] == b["role"] for a, b in zip(turns_, turns_[1:], strict=False))}
    assert len(one_exchange) > 50 and len(repeated) > 5  # the sample really holds these defects
    drops = DialogueFormat(min_turns=8, max_turns=20).apply(batch_from_table(table, "dialogue")).drops
    assert all(drops[index][0] == "turn_count" and drops[index][1].startswith("2 turns") for index in one_exchange)
    assert all(drops[index][0] == "repeated_role" for index in repeated)


def test_a_client_only_dialogue_from_the_sample_is_caught():
    # the shared sample happens to hold none; this is one of its dialogues with the counselor removed
    real = smilechat()["messages"][0].as_py()
    client_only = [turn for turn in real if turn["role"] == "user"]
    assert reason_of(client_only) == "client_only"
