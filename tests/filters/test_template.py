"""AI-template screens: self-disclosure, and counselor turns that are lists of suggestions."""

from __future__ import annotations

from soulray.config import AI_DISCLOSURE_PATTERNS
from soulray.filters.batch import batch_from_table
from soulray.filters.template import AdviceList, AiDisclosure
from tests.filters.tables import dialogues, good_dialogue, turns


def test_ai_disclosure_in_counselor_turns_only():
    table = dialogues(turns("你是AI吗？", "作为一个AI语言模型，我无法感受情绪。"), turns("作为人工智能，你懂我吗", "我在听。"),
                      turns("你好", "我是一个语言模型，但我愿意听你说。"), good_dialogue())
    drops = AiDisclosure(patterns=AI_DISCLOSURE_PATTERNS).apply(batch_from_table(table, "dialogue")).drops
    assert sorted(drops) == [0, 2]
    assert drops[0] == ("ai_disclosure", "turn 2 (assistant): 作为一个AI语言模型，我无法感受情绪。")


def test_advice_list_rate_and_threshold():
    listing = "以下是一些建议：1. 规律作息；2. 适当运动；3. 和朋友聊聊。"
    numbered = "你可以试试：（1）写日记（2）散步。"
    dialogue = good_dialogue(8)
    dialogue[1] = {"role": "assistant", "content": listing}
    dialogue[3] = {"role": "assistant", "content": numbered}
    one = good_dialogue(8)
    one[1] = {"role": "assistant", "content": listing}
    user_list = good_dialogue(8)
    user_list[0] = {"role": "user", "content": "我试过：1. 跑步 2. 冥想，都没用。"}
    batch = batch_from_table(dialogues(dialogue, one, user_list, good_dialogue(8)), "dialogue")
    verdict = AdviceList(min_items=2, max_rate=0.25).apply(batch)
    assert verdict.scores["advice_list_rate"].tolist() == [0.5, 0.25, 0.0, 0.0]
    assert verdict.drops == {0: ("advice_list", "50% of counselor turns are lists of suggestions (> 25%)")}


def test_a_decimal_or_a_single_number_is_not_a_list():
    dialogue = good_dialogue(8)
    dialogue[1] = {"role": "assistant", "content": "每天睡够7.5小时，第1步是放松。"}
    verdict = AdviceList(min_items=2, max_rate=0.0).apply(batch_from_table(dialogues(dialogue), "dialogue"))
    assert verdict.scores["advice_list_rate"].tolist() == [0.0]
