"""SoulChat's blocklist, and the crisis screen that never drops silently."""

from __future__ import annotations

import pytest

from soulray.config import CRISIS_TERMS, SELF_INTRODUCTION_PATTERNS, BlocklistSpec
from soulray.filters.batch import batch_from_table
from soulray.filters.ethics import CrisisScreen, EthicsBlocklist
from tests.filters.tables import dialogues, good_dialogue, turns


def test_blocklist_screens_only_the_configured_roles():
    table = dialogues(turns("我是一名大学生", "你好，我是你的心理咨询师"), turns("我是一名大学生", "你好，欢迎你来"))
    batch = batch_from_table(table, "dialogue")
    assert EthicsBlocklist(terms=["我是"], patterns=[], roles=["assistant"]).apply(batch).drops == {
        0: ("ethics_blocklist", "terms 我是 in turn 2 (assistant)")}
    assert set(EthicsBlocklist(terms=["我是"], patterns=[], roles=["user", "assistant"]).apply(batch).drops) == {0, 1}
    assert EthicsBlocklist(terms=[], patterns=[], roles=["user"]).apply(batch).drops == {}


def test_blocklist_terms_are_literal_not_regex():
    batch = batch_from_table(dialogues(turns("a.b", "c+d")), "dialogue")
    assert EthicsBlocklist(terms=["a*b", "c+d"], patterns=[], roles=["assistant"]).apply(batch).drops == {
        0: ("ethics_blocklist", "terms c+d in turn 2 (assistant)")}


def test_crisis_reject_names_every_term_and_turn_for_review():
    crisis = good_dialogue()
    crisis[2] = {"role": "user", "content": "有时候我真的想死，甚至想过自杀。"}
    crisis[6] = {"role": "user", "content": "我写过遗书。"}
    batch = batch_from_table(dialogues(good_dialogue(), crisis), "dialogue")
    verdict = CrisisScreen(terms=CRISIS_TERMS, action="reject").apply(batch)
    reason, detail = verdict.drops[1]
    assert list(verdict.drops) == [1] and reason == "crisis_review"
    assert detail.startswith("terms 自杀, 想死, 遗书 in turn 3 (user), turn 7 (user)")
    assert verdict.scores["crisis_turns"].tolist() == [0.0, 2.0]


def test_crisis_flag_keeps_the_row_and_marks_it():
    crisis = good_dialogue()
    crisis[0] = {"role": "user", "content": "我不想活了"}
    verdict = CrisisScreen(terms=CRISIS_TERMS, action="flag").apply(batch_from_table(dialogues(crisis, good_dialogue()),
                                                                                     "dialogue"))
    assert verdict.drops == {} and verdict.flags["crisis_screen"].tolist() == [True, False]


# Counselor turns of the shared SMILECHAT sample that hold 我是 as ordinary speech (the old substring
# screen rejected them: 32 of the 34 dialogues it hit), and what the narrowed screen is for.
ORDINARY = [
    "你可以告诉自己：“我是重要的，我是值得的。”",  # smile-01880
    "也就是说，你需要问自己“我是谁”“我要去哪”",  # smile-00746
    "如果我是你男朋友，我一定感动死了",  # smile-51261
    "起初我是不太情愿的，有时候甚至会抵触",  # smile-08748
    "简单来说，本我是人的本能，超我是我们的理想化目标",  # smile-53364
    "千万别再用“我是为你好”这种原因来解释",  # smile-38869
]
SELF_INTRODUCTIONS = [
    "你好，我是你的支持者。听到你的经历和困扰，我很愿意倾听和帮助你。",  # smile-25940
    "我是一个AI，没有真实的感受。",
    "我只是一个语言模型，但我愿意听你说。",
    "你好，我是心理咨询师，很高兴认识你。",
    "我是一名专业的心理咨询师。",
]


@pytest.mark.parametrize("text", ORDINARY + SELF_INTRODUCTIONS)
def test_default_blocklist_screens_self_identification_not_ordinary_speech(text):
    spec = BlocklistSpec(name="ethics_blocklist")
    screen = EthicsBlocklist(terms=spec.terms, patterns=spec.patterns, roles=spec.roles)
    drops = screen.apply(batch_from_table(dialogues(turns("我最近很难过。", text)), "dialogue")).drops
    assert bool(drops) == (text in SELF_INTRODUCTIONS)
    if drops:
        assert drops[0][1].startswith("terms 我") and drops[0][1].endswith("in turn 2 (assistant)")


def test_blocklist_patterns_hold_soulchats_terms_too():
    assert BlocklistSpec(name="ethics_blocklist").terms == ["自杀", "跳楼"]
    assert BlocklistSpec(name="ethics_blocklist").patterns == SELF_INTRODUCTION_PATTERNS
