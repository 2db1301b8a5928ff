"""Quality screens, each measure checked against a value worked out by hand."""

from __future__ import annotations

import pytest

from soulray.filters.batch import batch_from_table
from soulray.filters.quality import CjkRatio, LengthRatio, Repetition, TurnLength, duplicate_ngram_ratio
from tests.filters.tables import dialogues, good_dialogue, turns


def test_duplicate_ngram_ratio_by_hand():
    # "我很好我很好我很好": 3-grams 我很好 很好我 好我很 我很好 很好我 好我很 我很好 = 7 windows, 3 distinct → 4/7
    # second row: windows never cross turns; "我很好" + "我很好" = 2 windows, 1 distinct → 1/2
    # third: all distinct → 0; fourth: shorter than n → no windows → 0
    table = dialogues(turns("我很好我很好我很好", "嗯"), turns("我很好", "我很好"), turns("一二三四", "五六七"), turns("一", "二"))
    ratio = duplicate_ngram_ratio(batch_from_table(table, "dialogue"), 3)
    assert ratio.tolist() == pytest.approx([4 / 7, 1 / 2, 0.0, 0.0])


def test_repetition_drops_a_looping_dialogue():
    loop = good_dialogue(8)
    for index in range(1, 8, 2):
        loop[index] = {"role": "assistant", "content": "我能理解你的感受，这确实不容易，我们慢慢来。"}
    verdict = Repetition(ngram=10, max_ratio=0.2).apply(batch_from_table(dialogues(good_dialogue(8), loop), "dialogue"))
    assert list(verdict.drops) == [1] and verdict.drops[1][0] == "repetition"
    assert verdict.scores["repetition"][0] == 0.0


def test_cjk_ratio_counts_letters_and_digits_only():
    table = dialogues(turns("你好！！！……", "我在。"), turns("hello there", "I am here 好"), turns("", ""))
    verdict = CjkRatio(min_ratio=0.5).apply(batch_from_table(table, "dialogue"))
    assert verdict.scores["cjk_ratio"].tolist() == pytest.approx([1.0, 1 / 18, 1.0])  # 17 Latin letters, 1 Han
    assert list(verdict.drops) == [1]


def test_turn_length_limits_by_role_and_first_turn():
    long_question = good_dialogue(8)
    long_question[0] = {"role": "user", "content": "问" * 1000}
    long_user = good_dialogue(8)
    long_user[2] = {"role": "user", "content": "说" * 501}
    long_counselor = good_dialogue(8)
    long_counselor[5] = {"role": "assistant", "content": "答" * 701}
    table = dialogues(long_question, long_user, long_counselor)
    drops = TurnLength(max_user_chars=500, max_first_user_chars=1800, max_assistant_chars=700).apply(
        batch_from_table(table, "dialogue")).drops
    assert drops == {1: ("turn_too_long", "turn 3 (user): 501 characters > 500"),
                     2: ("turn_too_long", "turn 6 (counselor): 701 characters > 700")}


def test_length_ratio_ignores_the_first_user_turn():
    lecture = turns("问" * 300, "答" * 90, "好", "答" * 90)  # counselor 90 vs user 1 (the 300 is the question)
    balanced = turns("问" * 300, "答" * 20, "说" * 10, "答" * 20)
    verdict = LengthRatio(max_ratio=8).apply(batch_from_table(dialogues(lecture, balanced), "dialogue"))
    assert verdict.scores["length_ratio"].tolist() == [90.0, 2.0]
    assert list(verdict.drops) == [0] and verdict.drops[0][0] == "counselor_too_long"
