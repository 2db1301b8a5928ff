"""SoulChat's blocklist, and the crisis screen that never drops silently."""

from __future__ import annotations

import pytest

from soulray.filters.batch import batch_from_table
from soulray.filters.ethics import (
    CRISIS_TERMS,
    SELF_INTRODUCTION_PATTERNS,
    BlocklistSpec,
    CrisisRule,
    CrisisScreen,
    CrisisSpec,
    EthicsBlocklist,
)
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


# Crisis talk as clients of the shared SMILECHAT sample wrote it (client turns, quoted), where jieba's
# words do not line up with the term (只想/死, 不想/活下去, 自杀未遂, 跳楼自杀) or no older term held it.
CRISIS_TALK = [
    "我现在只想死，可我害怕，不是怕他们，是怕疼",  # smile-29878 (只想/死)
    "有时候会想死。",  # smile-55909 (会想/死)
    "失眠多梦，头发掉的好多，一天中想死的次数太多。",  # smile-24976 (中想/死)
    "有时候还会难受得不想活下去。我该怎么办呢？",  # smile-31825 (不想/活下去)
    "但是，多次自杀未遂的经历让我很困惑",  # smile-15505 (自杀未遂, one word)
    "我明白你希望获得解脱，但跳楼自杀并非一个解决问题的方法。",  # smile-48729, the counselor (跳楼自杀)
    "我不是真的想死，但经常想死，怎么回事？",  # smile-04337
    "我知道理智上的你是对的，但是真的很难受啊，有时候甚至想用刀子划自己的手臂。",  # smile-10215
    "很想去死，堕胎分手下跪挽回，我该怎么办？救救我",  # smile-36270
    "没有流动资金等于等死，一心求死。",  # smile-27639
    "有时候会觉得活着没意思不如死了算了。",  # smile-55889
    "生前的事死后都没有了，不如早点死了解脱，活着只是生不如死。",  # smile-41967
    "活着好累好痛苦，有时想想死亡，我这样是啥情况？",  # smile-50652 (想想/死亡: 想死 is no word here)
    "我就是一个泄气桶，死了就会解脱吗？",  # smile-36328
    "心里有个声音让我想要伤害自己。",  # smile-28057
    "是的，我真的不想再这样伤害自己，但又无法控制自己的情绪。",  # smile-44051
    "在那之前，答应我一件事吧，不要伤害自己，善待自己的身体。",  # smile-39422, the counselor
]
# Turns the substring screen sent to crisis review, from dialogues with no crisis talk at all.
NOT_CRISIS_TALK = [
    "但梦里的内容都是他跟其他女人在一起，而我在一旁独自伤心的情景。",  # smile-11004 (独自/伤心 holds 自伤)
    "所以，想自慰就去做，只要不影响别人，不伤害自己就OK了。",  # smile-08049
    "把自己的情绪用安全、不伤害自己，也不伤害别人的方式，通过自我对话来缓解",  # smile-08872
    "继续瞧不起她只会让自己觉得当初自己没有眼光，伤害自己的自尊。",  # smile-28611
    "可怜天下父母心，哪有父母会伤害自己的孩子呢",  # smile-30330
    "感到没有安全感，有时还会幻想别人伤害自己。",  # smile-15076, the counselor
    "你需要重新规划自己的生活重心。",  # 规划/自己 holds 划自己
]


def default_crisis_screen(action: str = "reject") -> CrisisScreen:
    spec = CrisisSpec(name="crisis_screen")
    return CrisisScreen(terms=spec.terms, patterns=spec.patterns, exceptions=spec.exceptions, action=action)


@pytest.mark.parametrize("text", CRISIS_TALK + NOT_CRISIS_TALK)
def test_default_crisis_screen_reads_words_not_substrings(text):
    verdict = default_crisis_screen().apply(batch_from_table(dialogues(turns(text, "我在这里听你说。")), "dialogue"))
    assert bool(verdict.drops) == (text in CRISIS_TALK)


def test_crisis_rule_counts_a_term_on_a_word_boundary_at_either_end():
    rule = CrisisRule(terms=["自伤", "想死"], patterns=[], exceptions=[])
    assert rule.found("我在一旁独自伤心") == []  # 独自/伤心: the term starts and ends inside other words
    assert rule.found("我现在只想死") == ["想死"]  # 只想/死: it ends on a boundary
    assert rule.found("我有自伤行为，也独自伤心") == ["自伤"]  # one counted occurrence is enough


def test_crisis_exceptions_only_cover_the_term_they_surround():
    text = "你要学会不伤害自己。可我还是想伤害自己。"
    assert default_crisis_screen().rule.found(text) == ["伤害自己"]
    assert default_crisis_screen().rule.found("你要学会不伤害自己。") == []


def test_crisis_detail_names_pattern_matches_and_only_counted_turns():
    dialogue = turns("我在一旁独自伤心。", "我在听。", "有时候甚至想用刀子划自己的手臂。", "谢谢你告诉我。")
    verdict = default_crisis_screen().apply(batch_from_table(dialogues(dialogue), "dialogue"))
    assert verdict.drops[0][1].startswith("terms 划自己的手 in turn 3 (user);")
    assert verdict.scores["crisis_turns"].tolist() == [1.0]


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
