"""PII: validators on their edge cases, each detector on positives and hard negatives, redaction that
leaves the rest of the text alone, and the vectorised pre-filter never hiding a real hit."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from soulray.filters.batch import batch_from_table
from soulray.filters.pii import (
    CANDIDATE,
    PII_TYPES,
    PiiDetector,
    PiiRedact,
    bank_card_valid,
    luhn_valid,
    resident_id_valid,
)
from tests.filters.tables import units

# The two worked examples printed in GB 11643-1999 itself, so the checksum is tested against the standard
# rather than against our own arithmetic.
STANDARD_IDS = ["11010519491231002X", "440524188001010014"]


@pytest.mark.parametrize("number", STANDARD_IDS + ["11010519491231002x"])
def test_resident_ids_of_the_standard_validate(number):
    assert resident_id_valid(number)


@pytest.mark.parametrize("number, why", [
    ("110105194912310021", "wrong check character"),
    ("110105194912310020", "wrong check character"),
    ("440524188001010015", "wrong check character"),
    ("99010519491231002X", "no province 99"),
    ("110105194913310021", "month 13"),
    ("110105190002290012", "29 February 1900 (not a leap year)"),
    ("110105218001010014", "born in 2180"),
    ("11010519491231002", "17 characters"),
    ("1101051949123100２X", "a full-width digit inside: digits_of normalises before, not here"),
])
def test_resident_id_rejections(number, why):
    assert not resident_id_valid(number), why


def test_resident_id_birth_date_not_in_the_future():
    number = "110105" + "20300101" + "001"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]  # GB 11643 table, written out here
    number += "10X98765432"[sum(int(d) * w for d, w in zip(number, weights, strict=True)) % 11]
    assert resident_id_valid(number, today=date(2031, 1, 1))
    assert not resident_id_valid(number, today=date(2029, 12, 31))


@pytest.mark.parametrize("number, valid", [
    ("79927398713", True), ("79927398710", False),  # the textbook Luhn example
    ("0", True), ("18", True), ("19", False),
    ("4111111111111111", True), ("4111111111111112", False),
    ("", False), ("4111-1111", False),
])
def test_luhn(number, valid):
    assert luhn_valid(number) is valid


@pytest.mark.parametrize("number, valid", [
    ("4111111111111111", True),  # Visa test card
    ("5555555555554444", True),  # Mastercard
    ("378282246310005", True),  # Amex, 15 digits
    ("6200000000000005", True),  # UnionPay, 16
    ("6205500000000000004", True),  # UnionPay, 19
    ("3566002020360505", True),  # JCB
    ("79927398713", False),  # Luhn-valid, but 11 digits and no scheme
    ("9111111111111119", False),  # Luhn-valid, no scheme starts with 9
    ("378282246310005" + "0", False),  # Amex prefix with 16 digits
])
def test_bank_cards_need_scheme_and_luhn(number, valid):
    assert luhn_valid(number) or not valid
    assert bank_card_valid(number) is valid


POSITIVES = [
    ("手机13812345678，打给我", "手机<PHONE>，打给我", "phone"),
    ("电话：+86 138 1234 5678。", "电话：<PHONE>。", "phone"),
    ("0086-139-8765-4321", "<PHONE>", "phone"),
    ("号码是１３８１２３４５６７８", "号码是<PHONE>", "phone"),
    ("我的身份证11010519491231002X丢了", "我的身份证<ID>丢了", "id"),
    ("身份证号 440524 18800101 0014", "身份证号 <ID>", "id"),
    ("卡号6200 0000 0000 0005请转账", "卡号<BANKCARD>请转账", "bankcard"),
    ("信用卡4111-1111-1111-1111", "信用卡<BANKCARD>", "bankcard"),
    ("发到zhang.san+x@example.com.cn就行", "发到<EMAIL>就行", "email"),
    ("邮箱：12345678@qq.com", "邮箱：<EMAIL>", "email"),
    ("看这个https://example.com/a?b=1。", "看这个<URL>。", "url"),
    ("网址www.example.cn/xyz，", "网址<URL>，", "url"),
    ("去psy-help.org看看", "去<URL>看看", "url"),
    ("服务器在192.168.1.20上", "服务器在<IP>上", "ip"),
    ("我的IP是10.0.0.8", "我的IP是<IP>", "ip"),
    ("连到8.8.4.4:53就好", "连到<IP>:53就好", "ip"),
    ("加我QQ：123456789", "加我QQ：<QQ>", "qq"),
    ("我的扣扣是87654321哦", "我的扣扣是<QQ>哦", "qq"),
    ("12345678（qq）", "<QQ>（qq）", "qq"),
    ("加我微信 abc_12345", "加我微信 <WECHAT>", "wechat"),
    ("vx：Zhang-San88，备注", "vx：<WECHAT>，备注", "wechat"),
    ("微信号是2233445566", "微信号是<WECHAT>", "wechat"),
]

HARD_NEGATIVES = [
    "订单号：6200000000000005已发货",  # a Luhn-valid number after an order word
    "快递单号13812345678",  # a phone-shaped tracking number
    "编号 110105194912310021",  # 18 digits, wrong check character
    "我的会员号是123456789012345678",  # a random 18-digit number
    "2023-10-01到2023年10月15日",  # dates
    "价格¥1,299.00，原价12999元",  # prices
    "时间戳20231001123045",  # 14 digits
    "考了12345678分",  # a QQ-shaped number without the word QQ
    "用户名abc_12345",  # a WeChat-shaped id without the word 微信
    "微信聊天记录让我很难过",  # the word without an id
    "版本 3.5 很好用",  # not an IP
    "电话12345678901",  # 11 digits, not a mobile prefix
    "138123456789",  # 12 digits
    # issue 16: enumerations and dotted numbers in Chinese text are no IP addresses without evidence
    "1.2.3.4冰冷的",
    "排卵期第8.9.10.11天",
    "步骤是1.2.3.4，一步一步来",
]


@pytest.mark.parametrize("text, expected, kind", POSITIVES)
def test_each_type_is_redacted_and_the_rest_kept(text, expected, kind):
    redacted, found = PiiDetector().redact(text)
    assert redacted == expected
    assert set(found) == {kind}


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negatives_are_left_alone(text):
    assert PiiDetector().redact(text) == (text, {})


def test_several_types_in_one_text_keep_everything_between():
    text = "我叫小王，电话13812345678，邮箱a.b@c.com，卡号4111111111111111，身份证11010519491231002X。谢谢！"
    redacted, found = PiiDetector().redact(text)
    assert redacted == "我叫小王，电话<PHONE>，邮箱<EMAIL>，卡号<BANKCARD>，身份证<ID>。谢谢！"
    assert found == {"phone": 1, "email": 1, "bankcard": 1, "id": 1}


def test_types_can_be_switched_off():
    detector = PiiDetector(types=["email"])
    assert detector.redact("电话13812345678 a@b.com")[0] == "电话13812345678 <EMAIL>"


def test_context_window_is_configurable():
    text = "我的QQ号码大家都知道就是123456789"
    assert PiiDetector(context_chars=4).redact(text)[0] == text
    assert PiiDetector(context_chars=12).redact(text)[0] == "我的QQ号码大家都知道就是<QQ>"


def test_the_candidate_prefilter_matches_every_positive():
    # the Python pass only sees segments the RE2 pre-filter selects: it must never miss a real hit
    texts = pa.array([text for text, _, _ in POSITIVES])
    assert pc.all(pc.match_substring_regex(texts, CANDIDATE)).as_py()
    assert set(PII_TYPES) == {kind for _, _, kind in POSITIVES}


def test_redaction_filter_over_a_batch_counts_per_row():
    table = units({"question": "电话13812345678", "answer": "好的，我的邮箱是a@b.com，QQ：12345678。"},
                  {"question": "我最近很焦虑", "answer": "先深呼吸，慢慢说，我们一起看看发生了什么。"})
    batch = batch_from_table(table, "unit")
    verdict = PiiRedact(types=list(PII_TYPES), context_chars=8).apply(batch)
    assert verdict.text.to_pylist() == ["电话<PHONE>", "", "好的，我的邮箱是<EMAIL>，QQ：<QQ>。",
                                        "我最近很焦虑", "", "先深呼吸，慢慢说，我们一起看看发生了什么。"]
    assert verdict.scores["pii_redactions"].tolist() == [3.0, 0.0]
    assert not verdict.drops
