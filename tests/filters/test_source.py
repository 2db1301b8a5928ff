"""Source cleaning: SMILE's ordered forum-word rules, the 1,800-character cap, too-short text."""

from __future__ import annotations

import pytest

from soulray.filters.batch import batch_from_table
from soulray.filters.source import (
    ForumWords,
    ForumWordsSpec,
    LengthCap,
    ReplaceRule,
    TooShort,
    replace_whole_words,
    word_boundaries,
    word_boundaries_around,
)
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


def smile(text: str) -> str:
    """SMILE's default rules, in order, on one text."""
    for rule in ForumWordsSpec(name="forum_words").rules:
        text = replace_whole_words(text, rule.pattern, rule.replacement)
    return text


@pytest.mark.parametrize("text", [
    "你现在遇到的问题主要是工作上的，而且由工作引发出了一系列的人际问题。",  # smile-32343 (counselor)
    "这个回答主观性很强", "这个主题很好", "这栋楼主人很好", "话题主线", "大楼主体",
    "标题主要说的是", "问题主动找上门",
])
def test_words_that_contain_a_forum_word_are_left_alone(text):
    """Issue 16: a substring rule turned 问题主要 into 问你要."""
    assert smile(text) == text


@pytest.mark.parametrize("text, expected", [
    ("请回答的答主一定看评论内容再回答。", "请回答的人一定看评论内容再回答。"),  # smile-35792 (client)
    ("楼主你好，我是", "你好，我是"),
    ("题主你好", "你好"),
    ("谢谢题主的分享", "谢谢你的分享"),
    ("题主的问题主要是", "你的问题主要是"),
    ("我觉得楼主你很勇敢", "我觉得你很勇敢"),
])
def test_forum_words_are_replaced_as_words(text, expected):
    assert smile(text) == expected


def test_the_forum_word_step_marks_the_rows_it_changed():
    table = units({"answer": "你现在遇到的问题主要是工作上的。"}, {"answer": "谢谢题主的分享，慢慢来。"})
    verdict = ForumWords(rules=ForumWordsSpec(name="forum_words").rules).apply(batch_from_table(table, "unit"))
    assert verdict.text.to_pylist()[2::3] == ["你现在遇到的问题主要是工作上的。", "谢谢你的分享，慢慢来。"]
    assert verdict.flags["normalised:forum_word"].tolist() == [False, True]


def test_whole_word_rules_must_be_literal():
    with pytest.raises(ValueError, match="whole_word applies to literal patterns"):
        ForumWordsSpec(name="forum_words", rules=[ReplaceRule(pattern="楼.", regex=True, whole_word=True)])


def test_word_boundaries_around_a_hit_are_the_whole_texts_there():
    # jieba cuts each run between punctuation on its own, so the crisis screen cuts only that run
    text = "我知道理智上的你是对的，但是真的很难受啊，有时候甚至想用刀子划自己的手臂。我在一旁独自伤心。"
    for term in ("划自己", "自伤", "你是"):
        start = text.index(term)
        around = word_boundaries_around(text, start, start + len(term))
        run_start = max(text.rfind(mark, 0, start) for mark in "，。") + 1
        run_end = min(position for position in (text.find(mark, start) for mark in "，。") if position >= 0)
        assert around == {b for b in word_boundaries(text) if run_start <= b <= run_end}

