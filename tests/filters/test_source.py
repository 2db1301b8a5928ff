"""Source cleaning: SMILE's ordered forum-word rules, the 1,800-character cap, too-short text."""

from __future__ import annotations

from soulray.config import ForumWordsSpec, ReplaceRule
from soulray.filters.batch import batch_from_table
from soulray.filters.source import ForumWords, LengthCap, TooShort
from tests.filters.tables import units


def test_smile_rules_replace_in_order():
    table = units({"question": "楼主你好，题主的问题我也有", "answer": "抱抱楼主～阿凉觉得答主说得对。加油！"})
    batch = batch_from_table(table, "unit")
    verdict = ForumWords(rules=ForumWordsSpec(name="forum_words").rules).apply(batch)
    question, _, answer = verdict.text.to_pylist()
    assert question == "你好，你的问题我也有"  # 楼主你 → 你 before 楼主 → 你: no "你你好"
    assert answer == "抱抱你～我觉得人说得对。加油！"  # hug greetings are template markers now
    assert not verdict.drops
    assert verdict.flags["normalised:forum_word"].tolist() == [True]


def test_rule_order_matters():
    batch = batch_from_table(units({"question": "楼主你好"}), "unit")
    reverse = ForumWords(rules=[ReplaceRule(pattern="楼主", replacement="你"), ReplaceRule(pattern="楼主你", replacement="你")])
    assert reverse.apply(batch).text.to_pylist()[0] == "你你好"


def test_length_cap_counts_all_of_a_row():
    table = units({"question": "问" * 900, "description": "述" * 400, "answer": "答" * 500},
                  {"question": "问" * 900, "description": "述" * 400, "answer": "答" * 501})
    verdict = LengthCap(max_chars=1800).apply(batch_from_table(table, "unit"))
    assert verdict.drops == {1: ("too_long", "1801 characters > 1800")}


def test_too_short_measures_each_side_without_spaces():
    table = units({"question": "焦虑", "answer": "我能理解你现在的感受。"}, {"question": "我很焦虑怎么办", "answer": "   嗯嗯   "},
                  {"question": "我很焦虑怎么办", "answer": "我能理解你现在的感受。"})
    verdict = TooShort(min_user_chars=5, min_assistant_chars=10).apply(batch_from_table(table, "unit"))
    assert verdict.drops == {0: ("too_short", "user text: 2 characters < 5"),
                             1: ("too_short", "counselor text: 2 characters < 10")}
