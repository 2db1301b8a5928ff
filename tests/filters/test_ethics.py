"""SoulChat's blocklist, and the crisis screen that never drops silently."""

from __future__ import annotations

from soulray.config import CRISIS_TERMS
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
