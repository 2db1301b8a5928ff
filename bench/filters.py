"""Filter benchmarks: dialogue-chain throughput per core, PII detection quality, and what each default
filter drops from the SMILECHAT sample.

    python bench/filters.py --quick        # about a minute
    python bench/filters.py                # more rows and repeats
    python bench/filters.py --rules-only   # issue 16's figures: reasons before/after, repairs, markers

- Speed: the default dialogue chain over SMILECHAT dialogues (the real 2,000, tiled), one thread, as a
  ratio against the same rules written per row in plain Python `re` (`baseline_row` below), measured in
  the same run, median of interleaved repeats. The two must reach the same decisions; their agreement
  is reported beside the speed.
- PII: precision and recall per type on a labelled set generated here (values made valid by checksums
  computed in this file, not by the detector's validators) with hard negatives: random 18- and 16-digit
  numbers, order and tracking numbers, dates, prices, timestamps.
- Drops: for each default filter, the share of the sample it drops in the chain (first reason wins)
  and alone, with two examples each, so a person can judge the defaults.
- Rules (issue 16): each reject reason's share under the previous and the current defaults, on the
  sample and the demo dialogues; repairs and normalisations made; each template marker's share in
  and out; the 我是 screen's hits before and after; and the rows drawn for a person's review (up to 30
  per reason, fixed seed), whose verdicts are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.clean import raw_dialogues, working_dialogues  # noqa: E402
from soulray.filters import DIALOGUE_STAGE, SOURCE_STAGE, build_chain  # noqa: E402
from soulray.filters.dialogue import (  # noqa: E402
    ENGLISH_SENTENCE,
    ROLE_LABEL,
    DialogueFormatSpec,  # noqa: E402
)
from soulray.filters.ethics import (  # noqa: E402
    BlocklistSpec,
    CrisisRule,  # noqa: E402
    CrisisSpec,
)
from soulray.filters.pii import (  # noqa: E402
    CANDIDATE,
    PiiDetector,
    PiiSpec,  # noqa: E402
)
from soulray.filters.quality import CjkRatioSpec, LengthRatioSpec, RepetitionSpec, TurnLengthSpec  # noqa: E402
from soulray.filters.registry import FiltersConfig  # noqa: E402
from soulray.filters.source import replace_whole_words  # noqa: E402
from soulray.filters.template import ADVICE_CUE, LIST_INTRO, LIST_ITEM, AdviceListSpec, AiDisclosureSpec  # noqa: E402  # noqa: E402
from soulray.repair import TurnLimits, repair_messages  # noqa: E402
from soulray.sources import normalise_fragment, plan_fragments  # noqa: E402
from soulray.sources.settings import SourceSpec  # noqa: E402
from soulray.store.shards import profile  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "smilechat-sample"
BLOCK_ROWS = 5_000  # the clean job's block size


# -- speed ----------------------------------------------------------------------------------------------
def smilechat_dialogues(rows: int) -> pa.Table:
    raw = pq.read_table(SAMPLE / "dialogs.parquet")
    tiles = pa.concat_tables([raw] * (rows // raw.num_rows + 1)).slice(0, rows)
    return working_dialogues(raw_dialogues(tiles, source_file="dialogs.parquet"))


class Baseline:
    """The default dialogue chain's rules, one dialogue at a time, in plain Python `re` and sets."""

    def __init__(self, config: FiltersConfig) -> None:
        specs = {spec.name: spec for spec in config.dialogue}
        self.specs = specs
        self.detector = PiiDetector(types=specs["pii_redact"].types, context_chars=specs["pii_redact"].context_chars)
        self.candidate = re.compile(CANDIDATE.replace("(?i)", ""), re.IGNORECASE)
        self.role_label = re.compile(ROLE_LABEL)
        self.english = re.compile(ENGLISH_SENTENCE)
        crisis = specs["crisis_screen"]
        self.crisis = CrisisRule(terms=crisis.terms, patterns=crisis.patterns, exceptions=crisis.exceptions)
        blocklist = specs["ethics_blocklist"]
        self.blocklist = re.compile("|".join([re.escape(term) for term in blocklist.terms]
                                             + [f"(?:{pattern})" for pattern in blocklist.patterns]))
        self.forum_rules = specs["forum_words"].rules
        # RE2 → Python re: \x{FE0F} is \uFE0F; a wordless turn is checked with unicodedata below
        self.markers = [(rule, re.compile(rule.pattern.replace(r"\x{FE0F}", "\uFE0F")))
                        for rule in specs["template_markers"].rules]
        repair = specs["dialogue_repair"]
        self.limits = TurnLimits(max_user_chars=repair.max_user_chars, max_first_user_chars=repair.max_first_user_chars,
                                 max_assistant_chars=repair.max_assistant_chars)
        self.ai = re.compile("|".join(f"(?:{p})" for p in specs["ai_disclosure"].patterns).replace("(?i)", ""),
                             re.IGNORECASE)
        self.list_item, self.list_intro = re.compile(LIST_ITEM), re.compile(LIST_INTRO)
        self.advice_cue = re.compile(ADVICE_CUE)
        self.han = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
        self.word = re.compile(r"[0-9A-Za-z\u00c0-\u024f\u0370-\u04ff\u3040-\u30ff\uac00-\ud7af\uff10-\uff19"
                               r"\uff21-\uff3a\uff41-\uff5a\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")

    def __call__(self, messages: list[dict[str, str]] | None) -> str | None:
        turns = [dict(turn, content=self._redact(turn["content"] or "")) for turn in messages or []]
        turns = [dict(turn, content=self._forum_words(turn["content"])) for turn in turns]
        turns = [dict(turn, content=self._markers(turn["content"])) if turn["role"] == "assistant" else turn
                 for turn in turns]
        reason = self._format_before_repair(turns)
        if reason:
            return reason
        turns, _ = repair_messages(turns, limits=self.limits)
        return (self._format(turns) or self._length_cap(turns) or self._ethics(turns) or self._template(turns)
                or self._lengths(turns) or self._repetition(turns) or self._cjk(turns) or self._duplicate(turns))

    def _forum_words(self, text: str) -> str:
        for rule in self.forum_rules:
            if rule.pattern in text:
                text = replace_whole_words(text, rule.pattern, rule.replacement)
        return text

    def _markers(self, text: str) -> str:
        for rule, pattern in self.markers:
            if rule.action == "normalise" and pattern.search(text):
                cut = pattern.sub(rule.replacement, text)
                if any(not unicodedata.category(char).startswith(("P", "S", "Z")) and not char.isspace() for char in cut):
                    text = cut
        return text

    def _format_before_repair(self, turns: list[dict[str, str]]) -> str | None:
        """What no repair changes: no turns, unknown roles, client-only dialogues."""
        roles = [turn["role"] for turn in turns]
        if not turns:
            return "no_messages"
        if any(role not in ("user", "assistant") for role in roles):
            return "unknown_role"
        return None if "assistant" in roles else "client_only"

    def _length_cap(self, turns: list[dict[str, str]]) -> str | None:
        return "too_long" if sum(len(turn["content"]) for turn in turns) > self.specs["length_cap"].max_chars else None

    def _redact(self, text: str) -> str:
        return self.detector.redact(text)[0] if self.candidate.search(text) else text

    def _format(self, turns: list[dict[str, str]]) -> str | None:
        spec, roles = self.specs["dialogue_format"], [turn["role"] for turn in turns]
        if not turns:
            return "no_messages"
        if any(role not in ("user", "assistant") for role in roles):
            return "unknown_role"
        if "assistant" not in roles:
            return "client_only"
        if any(not turn["content"].strip() for turn in turns):
            return "empty_turn"
        if any(a == b for a, b in zip(roles, roles[1:], strict=False)):
            return "repeated_role"
        if roles[0] != "user":
            return "not_starting_with_user"
        if roles[-1] != "assistant":
            return "not_ending_with_counselor"
        if len(turns) < spec.min_turns or (spec.max_turns is not None and len(turns) > spec.max_turns):
            return "turn_count"
        if any(self.role_label.search(turn["content"]) for turn in turns):
            return "role_label_in_turn"
        return "english_in_last_turn" if self.english.search(turns[-1]["content"]) else None

    def _ethics(self, turns: list[dict[str, str]]) -> str | None:
        if any(self.crisis.found(turn["content"]) for turn in turns):
            return "crisis_review"
        roles = self.specs["ethics_blocklist"].roles
        if any(turn["role"] in roles and self.blocklist.search(turn["content"]) for turn in turns):
            return "ethics_blocklist"
        return None

    def _template(self, turns: list[dict[str, str]]) -> str | None:
        counselor = [turn["content"] for turn in turns if turn["role"] == "assistant"]
        if any(self.ai.search(text) for text in counselor):
            return "ai_disclosure"
        spec = self.specs["advice_list"]
        lists = sum((len(self.list_item.findall(text)) >= spec.min_items and bool(self.advice_cue.search(text)))
                    or bool(self.list_intro.search(text)) for text in counselor)
        return "advice_list" if lists / len(counselor) > spec.max_rate else None

    def _lengths(self, turns: list[dict[str, str]]) -> str | None:
        spec = self.specs["turn_length"]
        for index, turn in enumerate(turns):
            limit = spec.max_assistant_chars if turn["role"] == "assistant" else \
                spec.max_first_user_chars if index == 0 else spec.max_user_chars
            if len(turn["content"]) > limit:
                return "turn_too_long"
        counselor = [len(t["content"]) for t in turns if t["role"] == "assistant"]
        user = [len(t["content"]) for t in turns[1:] if t["role"] == "user"]
        ratio_spec = self.specs["length_ratio"]
        if user and statistics.fmean(user) > 0 and statistics.fmean(counselor) > ratio_spec.min_counselor_chars and \
                statistics.fmean(counselor) / statistics.fmean(user) > ratio_spec.max_ratio:
            return "counselor_too_long"
        return None

    def _repetition(self, turns: list[dict[str, str]]) -> str | None:
        n, seen, total = self.specs["repetition"].ngram, set(), 0
        for turn in turns:
            text = turn["content"]
            for start in range(len(text) - n + 1):
                seen.add(text[start:start + n])
                total += 1
        return "repetition" if total and (total - len(seen)) / total > self.specs["repetition"].max_ratio else None

    def _cjk(self, turns: list[dict[str, str]]) -> str | None:
        text = "".join(turn["content"] for turn in turns)
        words = len(self.word.findall(text))
        ratio = len(self.han.findall(text)) / words if words else 1.0
        return "low_cjk_ratio" if ratio < self.specs["cjk_ratio"].min_ratio else None

    def _duplicate(self, turns: list[dict[str, str]]) -> str | None:
        spec, seen = self.specs["duplicate_turns"], set()
        for turn in turns:
            key = (turn["role"], turn["content"].strip())
            if key in seen and len(key[1]) >= spec.min_chars and turn["role"] in spec.roles:
                return "duplicate_turn"
            seen.add(key)
        return None


def bench_throughput(rows: int, repeats: int) -> dict:
    threads = pa.cpu_count()
    pa.set_cpu_count(1)  # per core: one thread for Arrow's kernels as for Python
    try:
        return _throughput(rows, repeats)
    finally:
        pa.set_cpu_count(threads)


def _throughput(rows: int, repeats: int) -> dict:
    config = FiltersConfig()
    table = smilechat_dialogues(rows)
    blocks = [table.slice(start, BLOCK_ROWS) for start in range(0, rows, BLOCK_ROWS)]
    chain = build_chain(config.dialogue, stage=DIALOGUE_STAGE, kind="dialogue")
    baseline = Baseline(config)
    messages = table["messages"].to_pylist()
    times: dict[str, list[tuple[float, float]]] = {"chain": [], "baseline": []}  # (wall s, CPU s)
    outputs, decisions = [], []
    for _ in range(repeats):  # interleaved, so load from elsewhere hits both alike
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = [chain(block) for block in blocks]
        times["chain"].append((time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = time.perf_counter(), time.process_time()
        decisions = [baseline(turns) for turns in messages]
        times["baseline"].append((time.perf_counter() - wall, time.process_time() - cpu))
    ours = [reason for out in outputs for reason in out["reject_reason"].to_pylist()]
    # CPU seconds of this single-threaded process are what one core spends, however busy the machine
    # is; wall seconds are reported beside them.
    chain_s, baseline_s = (statistics.median(cpu for _, cpu in times[name]) for name in ("chain", "baseline"))
    chain_wall, baseline_wall = (statistics.median(wall for wall, _ in times[name]) for name in ("chain", "baseline"))
    return {"rows": rows, "repeats": repeats, "block_rows": BLOCK_ROWS,
            "chars": int(pc.sum(pc.utf8_length(pc.list_flatten(table["messages"].combine_chunks()).field("content"))).as_py()),
            "soulray_rows_per_s": rows / chain_s, "baseline_rows_per_s": rows / baseline_s,
            "ratio": baseline_s / chain_s, "soulray_rows_per_wall_s": rows / chain_wall,
            "baseline_rows_per_wall_s": rows / baseline_wall, "ratio_wall": baseline_wall / chain_wall,
            "agreement": sum(a == b for a, b in zip(ours, decisions, strict=True)) / rows,
            "disagreements": Counter(f"{a} vs {b}" for a, b in zip(ours, decisions, strict=True) if a != b)
            .most_common(5)}


# -- PII quality ----------------------------------------------------------------------------------------
_PROVINCES = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54,
              61, 62, 63, 64, 65]
_FILLER = ["最近我总是睡不着，", "和家人的关系让我很困扰。", "我不知道该怎么办，", "谢谢你愿意听我说。", "工作压力太大了，",
           "我有时候觉得很孤单。", "心理咨询师建议我多运动，", "上周末我去看了医生，"]


def _id_number(rng: random.Random) -> str:
    body = f"{rng.choice(_PROVINCES)}{rng.randint(0, 9999):04d}{rng.randint(1950, 2010)}" \
           f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]  # GB 11643-1999, table 1
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def _luhn_complete(partial: str) -> str:
    for check in "0123456789":
        digits = [int(d) for d in partial + check][::-1]
        if sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)) % 10 == 0:
            return partial + check
    raise AssertionError("unreachable")


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("62", 16), ("62", 19), ("4", 16), ("51", 16), ("37", 15)])
    number = _luhn_complete(prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1)))
    if rng.random() < 0.4:
        number = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def _phone(rng: random.Random) -> str:
    digits = f"1{rng.choice('3456789')}{rng.randint(0, 999_999_999):09d}"
    style = rng.randrange(4)
    if style == 1:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if style == 2:
        return f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"
    return digits if style == 0 else "86" + digits


def _positive(kind: str, rng: random.Random) -> tuple[str, str]:
    """(context before, value) for one labelled PII value."""
    word = lambda *choices: rng.choice(choices)  # noqa: E731
    if kind == "id":
        return word("身份证号", "我的身份证是", "证件号码：", ""), _id_number(rng)
    if kind == "bankcard":
        return word("卡号", "银行卡：", "打到这张卡", "信用卡号是"), _card(rng)
    if kind == "phone":
        return word("电话", "手机：", "打给我", "联系方式"), _phone(rng)
    if kind == "email":
        user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(3, 10)))
        return word("邮箱", "发到", "email: "), f"{user}@{word('qq.com', '163.com', 'example.cn', 'psy.org')}"
    if kind == "url":
        return word("网址", "看看这个", ""), f"https://{word('www.', '')}site{rng.randint(1, 999)}.com/p/{rng.randint(1, 9999)}"
    if kind == "ip":
        return word("IP地址", "服务器"), ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "qq":
        return word("QQ：", "加我QQ", "扣扣号是"), str(rng.randint(10_000, 9_999_999_999))
    prefix = word("微信：", "加我微信", "vx ", "微信号是")
    return prefix, rng.choice("abcdefghijklmnopqrstuvwxyz") + "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(rng.randint(5, 12)))


def _hard_negative(kind: str, rng: random.Random) -> str:
    digits = lambda n: str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))  # noqa: E731
    return {
        "random_18_digits": lambda: f"编号{digits(18)}",
        "random_16_digits": lambda: f"记录{digits(16)}",
        "order_number": lambda: f"订单号：{digits(rng.choice([16, 18, 19]))}",
        "tracking_number": lambda: f"快递单号{digits(rng.choice([11, 12, 13, 15]))}",
        "date": lambda: rng.choice([f"{rng.randint(1990, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                                    f"{rng.randint(1990, 2024)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
                                    f"{rng.randint(1990, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"]),
        "price": lambda: rng.choice([f"¥{rng.randint(1, 99)},{rng.randint(0, 999):03d}.00", f"{rng.randint(100, 99999)}元"]),
        "timestamp": lambda: f"时间{rng.randint(2015, 2024)}{rng.randint(10**9, 10**10 - 1)}",
    }[kind]()


NEGATIVE_KINDS = ("random_18_digits", "random_16_digits", "order_number", "tracking_number", "date", "price",
                  "timestamp")


def pii_labelled_set(per_type: int, seed: int = 7) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Texts with the exact spans and types of the PII they hold (hard negatives hold none)."""
    rng = random.Random(seed)
    items = []
    for kind in ("id", "bankcard", "phone", "email", "url", "ip", "qq", "wechat"):
        for _ in range(per_type):
            context, value = _positive(kind, rng)
            before = rng.choice(_FILLER) + context
            items.append((before + value + "。" + rng.choice(_FILLER), [(kind, len(before), len(before) + len(value))]))
    for kind in NEGATIVE_KINDS:
        for _ in range(per_type):
            items.append((rng.choice(_FILLER) + _hard_negative(kind, rng) + "。", [("negative:" + kind, -1, -1)]))
    rng.shuffle(items)
    return items


def bench_pii(per_type: int) -> dict:
    detector = PiiDetector()
    tp, fp, fn = Counter(), Counter(), Counter()
    false_positives: dict[str, list[str]] = {}
    negatives_hit = Counter()
    for text, labels in pii_labelled_set(per_type):
        found = {(span.type, span.start, span.end) for span in detector.find(text)}
        truth = {label for label in labels if not label[0].startswith("negative:")}
        for label in truth:
            (tp if label in found else fn)[label[0]] += 1
        for span in found - truth:
            fp[span[0]] += 1
            false_positives.setdefault(span[0], []).append(text)
            if labels[0][0].startswith("negative:"):
                negatives_hit[labels[0][0].removeprefix("negative:")] += 1
    kinds = sorted(set(tp) | set(fn) | set(fp))
    per_type_result = {kind: {"precision": tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0,
                              "recall": tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 1.0,
                              "tp": tp[kind], "fp": fp[kind], "fn": fn[kind],
                              "fp_examples": false_positives.get(kind, [])[:2]} for kind in kinds}
    return {"per_type": per_type_result, "positives_per_type": per_type, "hard_negatives_per_kind": per_type,
            "hard_negatives_flagged": {kind: negatives_hit[kind] for kind in NEGATIVE_KINDS}}


# -- what the defaults drop ---------------------------------------------------------------------------
def bench_drops() -> dict:
    table = smilechat_dialogues(2_000)
    config = FiltersConfig()
    out = build_chain(config.dialogue, stage=DIALOGUE_STAGE, kind="dialogue")(table)
    rows = table.num_rows
    in_chain = _reasons_with_examples(out, table["id"].to_pylist())
    alone = {}
    redact = [spec for spec in config.dialogue if spec.name == "pii_redact"]
    for spec in config.dialogue:
        if spec.name == "pii_redact":
            continue
        marked = build_chain(redact + [spec], stage=DIALOGUE_STAGE, kind="dialogue")(table)
        alone[spec.name] = marked["reject_reason"].drop_null().length() / rows
    units = _smilechat_units()
    source = build_chain(config.source, stage=SOURCE_STAGE, kind="unit")(units)
    return {"dialogues": rows, "kept_share": out["reject_reason"].null_count / rows, "in_chain": in_chain,
            "alone": alone, "units": units.num_rows, "source_kept_share": source["reject_reason"].null_count / units.num_rows,
            "source_in_chain": _reasons_with_examples(source, source["answer_id"].to_pylist())}


def _smilechat_units() -> pa.Table:
    spec = SourceSpec(path=str(SAMPLE / "qa.parquet"))
    plan = plan_fragments(spec)
    return pa.concat_tables([normalise_fragment(fragment, spec) for fragment in plan.fragments])


def _reasons_with_examples(out: pa.Table, ids: list[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for row, (reason, detail) in enumerate(zip(out["reject_reason"].to_pylist(), out["reject_detail"].to_pylist(),
                                               strict=True)):
        if reason is None:
            continue
        entry = found.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 2:
            entry["examples"].append(f"{ids[row]}: {detail}")
    for entry in found.values():
        entry["share"] = entry["count"] / out.num_rows
    return dict(sorted(found.items(), key=lambda item: -item[1]["count"]))


# -- issue 16: repairs, rules and markers, before and after -------------------------------------------------
DEMO = Path(__file__).resolve().parent.parent / "soulray" / "data" / "demo" / "dialogs.parquet"
REVIEW_SEED, REVIEW_PER_REASON = 16, 30


# The crisis terms before issue 16, matched as plain substrings (自伤 in 独自伤心).
PREVIOUS_CRISIS_TERMS = ["自杀", "轻生", "自尽", "寻死", "想死", "不想活", "活不下去", "结束生命", "结束自己的生命",
                         "了结自己", "割腕", "跳楼", "跳河", "上吊", "吞药", "自残", "自伤", "伤害自己", "遗书"]


def previous_crisis_screen() -> CrisisSpec:
    """The crisis screen before issue 16: its terms as literal patterns, so no word rule applies."""
    return CrisisSpec(name="crisis_screen", terms=[], patterns=[re.escape(term) for term in PREVIOUS_CRISIS_TERMS],
                      exceptions=[])


def previous_defaults() -> list:
    """The default dialogue chain before issue 16: 8-20 utterances, no repairs, no forum-word or marker
    step, SoulChat's 我是 as a substring, crisis terms as substrings, the length ratio alone."""
    return [PiiSpec(name="pii_redact"), DialogueFormatSpec(name="dialogue_format", min_turns=8, max_turns=20),
            previous_crisis_screen(), BlocklistSpec(name="ethics_blocklist", terms=["我是", "自杀", "跳楼"], patterns=[]),
            AiDisclosureSpec(name="ai_disclosure"), AdviceListSpec(name="advice_list"), TurnLengthSpec(name="turn_length"),
            LengthRatioSpec(name="length_ratio", min_counselor_chars=0), RepetitionSpec(name="repetition"),
            CjkRatioSpec(name="cjk_ratio")]


def dialogues_of(path: Path) -> pa.Table:
    return working_dialogues(raw_dialogues(pq.read_table(path), source_file=path.name))


def bench_rules() -> dict:
    """Per input (the 2,000-dialogue sample; the 300 demo dialogues, a subset of it): the share of each
    reject reason under the previous and the current defaults, the repairs and normalisations made, each
    marker's share in and out, the 我是 screen's hits before and after, and the rows a person reviews
    (up to 30 per reason, drawn with a fixed seed; the verdicts are in bench/RESULTS.md)."""
    found = {}
    for name, path in (("smilechat-sample", SAMPLE / "dialogs.parquet"), ("demo", DEMO)):
        table = dialogues_of(path)
        before = build_chain(previous_defaults(), stage=DIALOGUE_STAGE, kind="dialogue")(table)
        after = build_chain(FiltersConfig().dialogue, stage=DIALOGUE_STAGE, kind="dialogue")(table)
        kept = after.filter(pc.is_null(after["reject_reason"]))
        facts = profile(after, kept)
        found[name] = {
            "rows": table.num_rows,
            "before": dict(Counter(before["reject_reason"].to_pylist())),
            "after": dict(Counter(after["reject_reason"].to_pylist())),
            "flags": facts.get("flags", {}), "markers_in": facts["markers_in"], "markers_out": facts["markers_out"],
            "published": kept.num_rows, "blocklist": _blocklist_hits(table), "crisis": _crisis_changes(table),
            "review": _review_sample(after, table["id"].to_pylist()),
        }
    return found


def _blocklist_hits(table: pa.Table) -> dict[str, int]:
    """Dialogues whose counselor turns hit SoulChat's 我是 substring, and the narrowed default patterns."""
    spec = BlocklistSpec(name="ethics_blocklist")
    messages = table["messages"].combine_chunks()
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    counselor = pc.equal(flat.field("role"), "assistant").to_numpy(zero_copy_only=False)
    hits = {}
    for label, pattern in (("substring 我是", "我是"), ("self-identification patterns", "|".join(spec.patterns))):
        matched = pc.match_substring_regex(flat.field("content"), pattern).to_numpy(zero_copy_only=False) & counselor
        hits[label] = len(set(parents[matched].tolist()))
    return hits


def _crisis_changes(table: pa.Table) -> dict:
    """Dialogues the crisis screen hits (any turn) before and after issue 16, and the ids on which the
    two disagree: each was read, and its verdict is in bench/RESULTS.md."""
    hit = {}
    for label, spec in (("before", previous_crisis_screen()), ("after", CrisisSpec(name="crisis_screen"))):
        out = build_chain([spec.model_copy(update={"action": "flag"})], stage=DIALOGUE_STAGE, kind="dialogue")(table)
        flagged = [bool(flags) and "crisis_screen" in flags for flags in out["flags"].to_pylist()]
        hit[label] = {record for record, flag in zip(table["id"].to_pylist(), flagged, strict=True) if flag}
    return {"before": len(hit["before"]), "after": len(hit["after"]),
            "no_longer_hit": sorted(hit["before"] - hit["after"]), "newly_hit": sorted(hit["after"] - hit["before"])}


def _review_sample(out: pa.Table, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    rows: dict[str, list[tuple[str, str]]] = {}
    for index, (reason, detail) in enumerate(zip(out["reject_reason"].to_pylist(), out["reject_detail"].to_pylist(),
                                                 strict=True)):
        if reason is not None:
            rows.setdefault(reason, []).append((ids[index], detail))
    rng = random.Random(REVIEW_SEED)
    for reason, items in rows.items():
        rng.shuffle(items)
        rows[reason] = sorted(items[:REVIEW_PER_REASON])
    return rows


def rules_markdown(rules: dict) -> list[str]:
    lines = []
    for name, facts in rules.items():
        rows = facts["rows"]
        reasons = sorted(set(facts["before"]) | set(facts["after"]), key=lambda r: (r is None, -facts["before"].get(r, 0)))
        lines += [f"Default dialogue chain on {name} ({rows:,} dialogues), previous defaults → current:", "",
                  "| reason | before | after |", "|---|---|---|"]
        for reason in reasons:
            label = "(published)" if reason is None else reason
            lines.append(f"| {label} | {facts['before'].get(reason, 0) / rows:.1%} | {facts['after'].get(reason, 0) / rows:.1%} |")
        published = max(facts["published"], 1)
        lines += ["", "| flag (published rows) | rows | share |", "|---|---|---|"]
        lines += [f"| {flag} | {count} | {count / published:.1%} |" for flag, count in sorted(facts["flags"].items())]
        lines += ["", "| marker (counselor turns) | share in | share published |", "|---|---|---|"]
        lines += [f"| {marker} | {facts['markers_in'][marker] / rows:.1%} | {facts['markers_out'][marker] / published:.1%} |"
                  for marker in sorted(facts["markers_in"])]
        lines += ["", "我是 screen, dialogues hit: " + ", ".join(f"{k} {v}" for k, v in facts["blocklist"].items()), ""]
        crisis = facts["crisis"]
        lines += [f"Crisis screen, dialogues hit in any turn: substrings {crisis['before']}, word rule {crisis['after']}; "
                  f"no longer hit ({len(crisis['no_longer_hit'])}): {', '.join(crisis['no_longer_hit']) or '-'}; "
                  f"newly hit ({len(crisis['newly_hit'])}): {', '.join(crisis['newly_hit']) or '-'}", ""]
    return lines


# -- entry points ---------------------------------------------------------------------------------------
def run(workdir: Path, quick: bool) -> dict:
    """All three, sized for --quick or a full run. `workdir` is unused: everything stays in memory."""
    del workdir
    rows, repeats, per_type = (10_000, 3, 300) if quick else (40_000, 5, 1_000)
    return {"throughput": bench_throughput(rows, repeats), "pii": bench_pii(per_type), "drops": bench_drops(),
            "rules": bench_rules()}


def markdown(result: dict) -> str:
    if "throughput" not in result:  # --rules-only
        return "\n".join(["## Filters: repairs, rules and markers (issue 16)", ""] + rules_markdown(result["rules"]))
    speed, pii, drops = result["throughput"], result["pii"], result["drops"]
    lines = ["## Filters", "",
             f"Default dialogue chain, one thread, {speed['rows']:,} SMILECHAT dialogues ({speed['chars'] / speed['rows']:.0f} "
             f"characters each), blocks of {speed['block_rows']:,}, median of {speed['repeats']}:", "",
             "| chain | rows per CPU-second (one core) | ratio | rows per wall-second | ratio |", "|---|---|---|---|---|",
             f"| soulray (pyarrow.compute + numpy over the block) | {speed['soulray_rows_per_s']:,.0f} | "
             f"{speed['ratio']:.1f}× | {speed['soulray_rows_per_wall_s']:,.0f} | {speed['ratio_wall']:.1f}× |",
             f"| same rules per row in plain Python `re` | {speed['baseline_rows_per_s']:,.0f} | 1.0× | "
             f"{speed['baseline_rows_per_wall_s']:,.0f} | 1.0× |", "",
             f"Decisions agree on {speed['agreement']:.2%} of rows"
             + (f" (differences: {speed['disagreements']})" if speed["disagreements"] else "") + ".", "",
             f"PII detection on a generated labelled set ({pii['positives_per_type']} values per type in Chinese "
             f"sentences, plus {pii['hard_negatives_per_kind']} hard negatives of each kind):", "",
             "| type | precision | recall | TP | FP | FN |", "|---|---|---|---|---|---|"]
    for kind, figures in pii["per_type"].items():
        lines.append(f"| {kind} | {figures['precision']:.3f} | {figures['recall']:.3f} | {figures['tp']} | "
                     f"{figures['fp']} | {figures['fn']} |")
    lines += ["", "Hard negatives redacted (false positives): " + ", ".join(
        f"{kind} {count}/{pii['hard_negatives_per_kind']}" for kind, count in pii["hard_negatives_flagged"].items()), ""]
    examples = [f"{kind}: {text}" for kind, figures in pii["per_type"].items() for text in figures["fp_examples"][:1]]
    if examples:
        lines += ["False-positive examples: " + "; ".join(examples), ""]
    lines += [f"What the default dialogue chain drops from the SMILECHAT sample ({drops['dialogues']:,} dialogues; "
              f"{drops['kept_share']:.1%} kept):", "",
              "| reason | share (in chain) | examples |", "|---|---|---|"]
    for reason, entry in drops["in_chain"].items():
        lines.append(f"| {reason} | {entry['share']:.1%} | {' / '.join(entry['examples'])} |")
    lines += ["", "Each filter alone (after redaction): " + ", ".join(
        f"{name} {share:.1%}" for name, share in drops["alone"].items()), "",
        f"Source chain on the sample's {drops['units']:,} Q&A units: {drops['source_kept_share']:.1%} kept; "
        + ", ".join(f"{reason} {entry['share']:.1%} (e.g. {entry['examples'][0]})"
                    for reason, entry in drops["source_in_chain"].items())]
    if "rules" in result:
        lines += ["", "Repairs, rules and markers (issue 16):", ""] + rules_markdown(result["rules"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    parser.add_argument("--rules-only", action="store_true", help="only the before/after rule figures and the "
                                                                 "review sample (seconds)")
    args = parser.parse_args()
    result = {"rules": bench_rules()} if args.rules_only else run(Path("."), args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
