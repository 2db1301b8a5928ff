"""PII in Chinese counseling text: detect, validate, replace with a typed placeholder.

Two passes keep this fast and precise: one RE2 regex over the whole segment column (pyarrow.compute)
finds the few segments that could hold PII at all; only those go through Python `re`, where each
candidate number is validated (resident ID checksum, Luhn) before it is replaced. Types are claimed in
a fixed order (e-mail before URL and QQ, ID before bank card before phone) so a span gets one label.

Sources of the rules:
- Resident ID (GB 11643-1999): 6-digit region code (first two digits a province code of GB/T 2260),
  8-digit birth date, 3-digit sequence, check character by ISO 7064 MOD 11-2 (weights 2^(17-i) mod 11,
  values "10X98765432").
- Bank cards: ISO/IEC 7812 Luhn check, plus the issuer prefixes and lengths of the schemes issued in
  China (UnionPay 62/60/65/81 with 16-19 digits, Visa, Mastercard, Amex, JCB, Diners).
- Mainland mobile numbers: 1[3-9] + 9 digits (MIIT numbering plan), optional +86/0086, separators.
- IPv4 addresses: four dotted numbers are also enumerations and dates in Chinese text ("1.2.3.4冰冷的",
  "排卵期第8.9.10.11天"), so a dotted quad counts only with evidence: a port after it, a URL scheme or
  @ before it, or an IP/端口/地址/服务器… word within `context_chars`.
- QQ numbers (5-12 digits) and WeChat IDs (a letter then 5-19 letters, digits, _ or -) look like any
  other token, so they count only next to a context word (QQ, 微信, vx, …).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict
from soulray.filters.batch import Batch

PiiType = Literal["email", "url", "id", "bankcard", "phone", "ip", "qq", "wechat"]


class PiiSpec(FilterSettings):
    name: Literal["pii_redact"]
    types: list[PiiType] = Field(default_factory=lambda: ["email", "url", "id", "bankcard", "phone", "ip", "qq",
                                                          "wechat"])
    context_chars: int = Field(8, ge=0, le=40, description="QQ/WeChat IDs count within this many chars of a "
                                                            "context word; order words this close veto numbers")


PLACEHOLDERS = {"email": "<EMAIL>", "url": "<URL>", "id": "<ID>", "bankcard": "<BANKCARD>", "phone": "<PHONE>",
                "ip": "<IP>", "qq": "<QQ>", "wechat": "<WECHAT>"}
PII_TYPES = tuple(PLACEHOLDERS)  # also the order in which types claim text

_D = "[0-9０-９]"  # people type full-width digits too
_NOT_D = "[^0-9０-９]"
_FULL_WIDTH = str.maketrans("０１２３４５６７８９ＸｘＱｑ＠", "0123456789XxQq@")
_TLDS = "com|cn|net|org|edu|gov|io|cc|me|info|top|xyz"
_WECHAT_WORDS = "微信|weixin|wechat|vx|wx|v信|威信|薇信|维信|徽信"
_QQ_WORDS = "qq|扣扣|企鹅号"

# Every segment any pattern below can match also matches this (a superset), so the Python pass can skip
# the rest: runs of 5 digits, digit groups split by a separator, @, URL marks, dotted quads, context words.
CANDIDATE = (rf"(?i){_D}{{5}}|{_D}{{3}}[ \-－]{_D}{{4}}|[@＠]|://|www\.|\.(?:{_TLDS})|"
             rf"[0-9]{{1,3}}\.[0-9]{{1,3}}\.[0-9]{{1,3}}\.[0-9]|{_WECHAT_WORDS}|{_QQ_WORDS}")

_SEP = "[ \\-－]"
_PATTERNS = {
    "email": re.compile(r"[A-Za-z0-9._%+\-]+[@＠][A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    "url": re.compile(rf"(?i)(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+|"
                      rf"(?<![A-Za-z0-9@.])(?:[A-Za-z0-9\-]+\.)+(?:{_TLDS})(?:/[A-Za-z0-9\-._~/?#=&%]*)?(?![A-Za-z0-9])"),
    "id": re.compile(rf"(?<![0-9０-９A-Za-z]){_D}{{6}}{_SEP}?{_D}{{8}}{_SEP}?{_D}{{3}}[0-9０-９XxＸｘ](?![0-9０-９A-Za-z])"),
    "bankcard": re.compile(rf"(?<!{_D}){_D}{{4}}(?:{_SEP}?{_D}{{4}}){{2,3}}(?:{_SEP}?{_D}{{1,3}})?(?!{_D})"),
    "phone": re.compile(rf"(?<!{_D})(?:(?:\+|＋|00)?86{_SEP}?)?[1１][3-9３-９]{_D}(?:{_SEP}?{_D}{{4}}){{2}}(?!{_D})"),
    "ip": re.compile(r"(?<![0-9.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                     r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![0-9]|\.[0-9])"),
}
_IP_EVIDENCE = re.compile(r"(?i)ip|端口|地址|服务器|主机|网址|网关|路由|局域网|内网|外网|公网|host|ping|dns")
_PORT = re.compile(r"[:：][0-9]{1,5}(?![0-9])")
_URL_BEFORE = re.compile(r"(?:://|@)$")
# Words that say a long number is not personal: an order, tracking or serial number.
_NOT_PERSONAL = re.compile(r"订单|单号|运单|快递|物流|流水|交易号|编号|工号|学号|序列号|型号|批号|发票|车次|航班")

# ISO 7064 MOD 11-2 for resident IDs
_ID_WEIGHTS = [pow(2, 17 - index, 11) for index in range(17)]
_ID_CHECK = "10X98765432"
# GB/T 2260 province-level codes (the first two digits of a region code); 71/81/82/83: Taiwan, Hong Kong,
# Macao, and residence permits of Taiwan residents.
_PROVINCES = frozenset([11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                        50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83])
# (prefixes, allowed lengths) of card schemes issued in China
_CARD_SCHEMES = (
    (("62", "60", "65", "81"), range(16, 20)),  # UnionPay (and Discover's 65)
    (("4",), (13, 16, 19)),  # Visa
    (("51", "52", "53", "54", "55", "22", "23", "24", "25", "26", "27"), (16,)),  # Mastercard
    (("34", "37"), (15,)),  # American Express
    (("35",), range(16, 20)),  # JCB
    (("30", "36", "38"), range(14, 17)),  # Diners Club
)


def digits_of(text: str) -> str:
    return "".join(ch for ch in text.translate(_FULL_WIDTH) if ch.isascii() and (ch.isdigit() or ch in "Xx"))


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) check of ISO/IEC 7812 over a string of digits."""
    if not number.isdigit() or not number.isascii():
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def bank_card_valid(number: str) -> bool:
    """An issuer prefix and length of a known scheme, and the Luhn check."""
    if not luhn_valid(number):
        return False
    return any(number.startswith(prefixes) and len(number) in lengths for prefixes, lengths in _CARD_SCHEMES)


def resident_id_valid(number: str, *, today: date | None = None) -> bool:
    """A mainland resident ID: province code, a real birth date not in the future, MOD 11-2 check."""
    number = number.upper()
    if len(number) != 18 or not number[:17].isdigit() or not number.isascii():
        return False
    if int(number[:2]) not in _PROVINCES:
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if born.year < 1800 or born > (today or date.today()):  # 1800: the standard's own example is born 1880
        return False
    return _ID_CHECK[sum(int(digit) * weight for digit, weight in zip(number[:17], _ID_WEIGHTS, strict=True)) % 11] == number[17]


def mobile_valid(number: str) -> bool:
    number = number[2:] if len(number) == 13 and number.startswith("86") else number
    number = number[4:] if len(number) == 15 and number.startswith("0086") else number
    return len(number) == 11 and number[0] == "1" and number[1] in "3456789"


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int


class PiiDetector:
    """Finds PII spans in one text; `redact` replaces them with their placeholders."""

    def __init__(self, *, types: Iterable[str] = PII_TYPES, context_chars: int = 8) -> None:
        self.types = [kind for kind in PII_TYPES if kind in set(types)]
        gap = f"[^0-9０-９A-Za-z\\n]{{0,{context_chars}}}"
        number = f"[1-9１-９]{_D}{{4,11}}(?!{_D})"
        self.context = {
            "qq": re.compile(rf"(?i)(?:{_QQ_WORDS})(?:号码?)?{gap}(?P<pii>{number})|"
                             rf"(?<!{_D})(?P<pii2>{number}){gap}(?:{_QQ_WORDS})"),
            "wechat": re.compile(rf"(?i)(?:{_WECHAT_WORDS})(?:号)?{gap}"
                                 rf"(?P<pii>[A-Za-z][\-_A-Za-z0-9]{{5,19}}(?![\-_A-Za-z0-9])|{number})"),
        }
        self.context_chars = context_chars

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        masked = text  # claimed spans are blanked (same length) so later types cannot reuse them
        for kind in self.types:
            for start, end in self._matches(kind, masked):
                spans.append(Span(kind, start, end))
                masked = masked[:start] + "\x00" * (end - start) + masked[end:]
        return sorted(spans, key=lambda span: span.start)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        spans = self.find(text)
        if not spans:
            return text, Counter()
        pieces, position = [], 0
        for span in spans:
            pieces += [text[position:span.start], PLACEHOLDERS[span.type]]
            position = span.end
        pieces.append(text[position:])
        return "".join(pieces), Counter(span.type for span in spans)

    def _matches(self, kind: str, text: str) -> list[tuple[int, int]]:
        if kind in self.context:
            found = []
            for match in self.context[kind].finditer(text):
                group = "pii" if match.group("pii") else "pii2"
                found.append(match.span(group))
            return found
        found = []
        for match in _PATTERNS[kind].finditer(text):
            start, end = match.span()
            if kind == "url":
                end -= len(match.group()) - len(match.group().rstrip(".,;:!?)'"))
            if self._valid(kind, match.group(), text[max(0, start - self.context_chars):start],
                           text[end:end + self.context_chars]):
                found.append((start, end))
        return found

    def _valid(self, kind: str, value: str, before: str, after: str) -> bool:
        if kind == "ip":
            return bool(_PORT.match(after) or _URL_BEFORE.search(before) or _IP_EVIDENCE.search(before)
                        or _IP_EVIDENCE.search(after))
        if kind == "id":
            return resident_id_valid(digits_of(value))
        if kind in ("bankcard", "phone") and _NOT_PERSONAL.search(before):
            return False
        if kind == "bankcard":
            return bank_card_valid(digits_of(value))
        if kind == "phone":
            return mobile_valid(digits_of(value))
        return True


class PiiRedact(Filter):
    """Replace PII with typed placeholders in every segment; counts redactions per row, never drops."""

    name = "pii_redact"
    settings = PiiSpec

    def __init__(self, *, types: list[str], context_chars: int) -> None:
        self.detector = PiiDetector(types=types, context_chars=context_chars)

    def apply(self, batch: Batch) -> Verdict:
        counts = np.zeros(len(batch.text))
        candidates = np.flatnonzero(pc.match_substring_regex(batch.text, CANDIDATE).to_numpy(zero_copy_only=False))
        changed, replacements = np.zeros(len(batch.text), dtype=bool), []
        for index, text in zip(candidates, batch.text.take(pa.array(candidates)).to_pylist(), strict=True):
            redacted, found = self.detector.redact(text)
            if found:
                counts[index], changed[index] = sum(found.values()), True
                replacements.append(redacted)
        text = pc.replace_with_mask(batch.text, pa.array(changed), pa.array(replacements, pa.string())) \
            if replacements else None
        return Verdict(text=text, scores={"pii_redactions": batch.per_row_sum(counts)})
