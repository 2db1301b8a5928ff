"""AI-template screens: self-disclosure, counselor turns that are lists of suggestions, forum and template
leftovers."""

from __future__ import annotations

import pyarrow as pa
import pytest

from soulray.filters import DIALOGUE_STAGE, build_chain
from soulray.filters.batch import batch_from_table
from soulray.filters.template import (
    AI_DISCLOSURE_PATTERNS,
    AdviceList,
    AiDisclosure,
    MarkerRule,
    TemplateMarkers,
    TemplateMarkersSpec,
    marker_rows,
)
from soulray.store.shards import profile
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


# -- forum and template markers (issue 16), on counselor turns quoted from the shared SMILECHAT sample
def markers(*counselor_turns: str) -> pa.Table:
    return dialogues(*[turns("我最近很难过。", text) for text in counselor_turns])


def normalised(text: str) -> str:
    spec = TemplateMarkersSpec(name="template_markers")
    verdict = TemplateMarkers(rules=spec.rules).apply(batch_from_table(markers(text), "dialogue"))
    return verdict.text.to_pylist()[1] if verdict.text is not None else text


@pytest.mark.parametrize("text, expected", [
    ("谢邀。抛开个性因素，我想你对于女朋友来说", "抛开个性因素，我想你对于女朋友来说"),  # smile-43767
    ("感谢邀请，有幸给到你些建议。", "有幸给到你些建议。"),  # smile-12406
    ("嗨小鲸鱼，谢谢你的邀请和信任。听到你说了很多事情", "嗨小鲸鱼，听到你说了很多事情"),  # smile-06291
    ("见字如面，我理解你内心的苦楚。", "我理解你内心的苦楚。"),  # smile-09842
    ("见字如面\ufe0f 看到你的描述，理解你此刻没脱单的心情？", "看到你的描述，理解你此刻没脱单的心情？"),  # smile-06683
    ("【抱抱】见字如面！首先，很高兴能在这里看到您", "首先，很高兴能在这里看到您"),  # smile-08752
    ("先给你一个大的抱抱，见字如面。从你的问题中我感受到了你的困惑。", "从你的问题中我感受到了你的困惑。"),  # smile-36226
    ("抱抱焦虑的你~非常理解你的焦虑和矛盾~", "非常理解你的焦虑和矛盾~"),  # smile-38608
    ("这让我很心疼你。抱抱。#hug#", "这让我很心疼你。"),  # smile-41028
    ("求助者，你好。对于你的问题，我提一点自己的看法。", "你好。对于你的问题，我提一点自己的看法。"),  # smile-36041
    ("有助于减轻心理负担。求助者，记住，你并不孤单。", "有助于减轻心理负担。记住，你并不孤单。"),  # smile-31825
    ("认真看完你的倾诉，深深地理解你的痛苦。以下是我的分析:", "认真看完你的倾诉，深深地理解你的痛苦。"),  # smile-40929
])
def test_forum_and_template_leftovers_are_cut(text, expected):
    assert normalised(text) == expected


@pytest.mark.parametrize("text", [
    "请你静下心来，抱抱自己，抱抱那个曾经可能未得到充足关注、关爱和关心的自己。",  # smile-09954: advice
    "办法：买个娃娃，抱抱它，也可以让它抱抱自己，买个重力毯",  # smile-19328
    "例如抱抱、例如夸奖，例如被看见、被重视。",  # smile-30344
    "白天时常觉得孤独夜里更甚总希望有抱抱。",  # smile-51656: the client's words, quoted
    "面对说谎的来访者，建立良好的咨询关系是很重要的一步。",  # smile-00314: the client in prose, not addressed
    "你可以提醒来访者，咨询是一个私人的空间。",  # smile-00316
    "见字如面～",  # the cut would leave the turn without a word: kept
])
def test_advice_prose_and_whole_turns_are_left_alone(text):
    assert normalised(text) == text


def test_markers_are_flagged_scored_and_counted_before_and_after():
    table = markers("谢邀。抛开个性因素，我想你对于女朋友来说", "非常理解你的心情。疯狂购物的原因可能有很多。",  # smile-03131
                    "你好，我在听。")
    spec = TemplateMarkersSpec(name="template_markers")
    verdict = TemplateMarkers(rules=spec.rules).apply(batch_from_table(table, "dialogue"))
    assert verdict.flags["normalised:xie_yao"].tolist() == [True, False, False]
    assert verdict.scores["marker_stock_opening"].tolist() == [0.0, 1.0, 0.0]
    assert marker_rows(table["messages"].combine_chunks())["xie_yao"].tolist() == [True, False, False]
    out = build_chain([spec], stage=DIALOGUE_STAGE, kind="dialogue")(table)
    assert out["flags"].to_pylist() == [["normalised:xie_yao"], None, None]
    found = profile(out, out)
    assert found["markers_in"]["xie_yao"] == 1 and found["markers_out"]["xie_yao"] == 0
    assert found["markers_out"]["stock_opening"] == 1 and found["flags"] == {"normalised:xie_yao": 1}


def test_a_marker_rule_can_reject():
    rule = MarkerRule(marker="xie_yao", pattern="谢邀", action="reject")
    verdict = TemplateMarkers(rules=[rule]).apply(batch_from_table(markers("谢邀。抛开个性因素", "你好"), "dialogue"))
    assert verdict.drops == {0: ("marker_xie_yao", "turn 2 (assistant): 谢邀。抛开个性因素")}


@pytest.mark.parametrize("text, listing", [
    # smile-44311: the counselor numbers the client's problems, no advice
    ("根据你的描述，我了解到你有以下问题：1.缺乏学习动力和浪费空闲时间；2.学习上浑水摸鱼且缺乏自制力；3.渴望在内心产生观念改变。", False),
    # smile-37575: numbered questions
    ("比如，回答以下几个问题：1、你们是因为什么而结婚的呢？2、你们结婚多久了？", False),
    ("我建议你：1. 规律作息；2. 适当运动。", True),
    ("你可以试试：（1）写日记（2）散步。", True),
])
def test_a_numbered_recap_or_questions_is_no_list_of_suggestions(text, listing):
    dialogue = good_dialogue(8)
    dialogue[1] = {"role": "assistant", "content": text}
    verdict = AdviceList(min_items=2, max_rate=0.0).apply(batch_from_table(dialogues(dialogue), "dialogue"))
    assert verdict.scores["advice_list_rate"].tolist() == [0.25 if listing else 0.0]
