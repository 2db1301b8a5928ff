"""Typed job configuration: a YAML file plus `--set key.path=value` overrides.

Every job has one pydantic model. Unknown keys, wrong types and missing required values are errors that
name the key and the file. A config never holds a secret: only the *name* of an environment variable
(or a file path) that the worker resolves itself, so configs can be logged, hashed and stored in
manifests as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)

from soulray.errors import ConfigError
from soulray.redaction import find_secret, redact
from soulray.repair import TurnLimits

EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# Dataset and version names become path segments (local folders, S3 keys): letters, digits and ._-,
# starting with a letter or digit, so no name can be '..', hidden, absolute or hold a '/'.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DatasetName = Annotated[str, StringConstraints(pattern=DATASET_NAME)]

class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Config(StrictModel):
    """How to reach S3 or an S3-compatible endpoint. Credentials come from the standard AWS chain
    (instance role, ~/.aws, AWS_* env vars) unless the names of other env vars are given here."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO/moto")
    region: str | None = None
    access_key_id_env: EnvVarName | None = None
    secret_access_key_env: EnvVarName | None = None
    session_token_env: EnvVarName | None = None
    profile: str | None = Field(None, description="a profile of the shared AWS credentials file")


class ColumnMap(StrictModel):
    """Source column names. `question` and `answer` (long) / `answers` (wide) are required in the
    file; the others are used when present, and are errors only when named explicitly but missing."""

    question_id: str = "question_id"
    answer_id: str = "answer_id"
    question: str = "question"
    description: str = "description"
    answer: str = "answer"
    answers: str = "answers"
    topic: str = "topic"


class SourceSpec(StrictModel):
    path: str = Field(description="a Parquet file or folder of Parquet files, local or s3://")
    layout: Literal["long", "wide"] = Field(
        "long", description="long: one row per answer; wide: one row per question with a list of answers"
    )
    columns: ColumnMap = ColumnMap()
    default_topic: str = ""


class StorageConfig(StrictModel):
    root: str = Field("output", description="a local folder or s3://bucket/prefix")
    version: str | None = Field(None, pattern=VERSION_NAME,
                                description="version id to publish (default: UTC time + run id)")
    rows_per_shard: int = Field(50_000, ge=1, description="rows handed to one shard writer")
    max_shard_mb: int = Field(256, ge=1, description="split a writer's rows into shards under this size")


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: start a local Ray; 'auto' or ray://… to join")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray (default: max(4, cores))")
    object_store_mb: int | None = Field(None, ge=100, description="object store of a local Ray (default: Ray's, 30% "
                                                                  "of memory); what does not fit spills to disk")


class ModelLimits(StrictModel):
    rpm: int = Field(ge=1, description="requests per minute for this model on this key")
    tpm: int = Field(ge=1, description="tokens per minute for this model on this key")
    max_concurrent: int | None = Field(None, ge=1, description="default: the key's max_concurrent")
    batch_queue_tokens: int | None = Field(None, ge=1, description="default: the key's batch_queue_tokens")


class ApiKey(StrictModel):
    """One API key, by name, with its limits. The secret itself is read on each worker from
    `api_key_env` or `api_key_file`; a key with neither sends a placeholder (local servers)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    api_key_env: EnvVarName | None = None
    api_key_file: str | None = None
    base_url: str | None = Field(None, description="this key's endpoint, if not rewrite.base_url")
    models: list[str] | None = Field(None, description="models this key may call (default: all)")
    api_version: str | None = Field(None, description="Azure OpenAI: the api-version; base_url is then the resource "
                                                      "endpoint and model names are deployment names")
    rpm: int = Field(500, ge=1, description="requests per minute")
    tpm: int = Field(200_000, ge=1, description="tokens per minute")
    max_concurrent: int = Field(64, ge=1, description="requests in flight at once")
    model_limits: dict[str, ModelLimits] = Field(
        default_factory=dict, description="per-model limits (OpenAI limits each model separately); models not "
                                          "listed share the key-level rpm/tpm/max_concurrent")
    budget_usd: float | None = Field(None, ge=0)
    batch_queue_tokens: int = Field(2_000_000, ge=1, description="rewrite.mode batch: prompt tokens this key may "
                                    "have enqueued per model (the provider's batch queue limit for its tier)")

    @model_validator(mode="after")
    def _azure_needs_endpoint(self) -> ApiKey:
        if self.api_version and not self.base_url:
            raise ValueError(f"key {self.name}: api_version (Azure) needs base_url, the resource endpoint "
                             "(https://<resource>.openai.azure.com)")
        return self


class ModelShare(StrictModel):
    name: str
    share: float = Field(1.0, gt=0, description="relative share of rows routed to this model")


class Price(StrictModel):
    prompt_per_1k: float = Field(ge=0)
    completion_per_1k: float = Field(ge=0)


# USD per 1,000 tokens, list prices at the time of writing; override in config for your contract.
DEFAULT_PRICES = {
    "gpt-3.5-turbo": Price(prompt_per_1k=0.0005, completion_per_1k=0.0015),
    "gpt-4": Price(prompt_per_1k=0.03, completion_per_1k=0.06),
    "gpt-4o-mini": Price(prompt_per_1k=0.00015, completion_per_1k=0.0006),
    "deepseek-chat": Price(prompt_per_1k=0.00027, completion_per_1k=0.0011),
}


class LocalServerConfig(StrictModel):
    """The embedded offline rewriter used when rewrite.base_url is 'local' (demo, tests)."""

    latency_ms: tuple[float, float] = (0.0, 0.0)
    rpm: int = Field(100_000, ge=1)
    tpm: int = Field(100_000_000, ge=1)
    # how a real provider differs from soulray's own view (soulray/rewrite/server.py, ServerConfig)
    token_counting: Literal["ours", "characters"] | float = Field(
        "ours", description="'ours', 'characters', or a ratio to ours (e.g. 1.5)")
    charge: Literal["actual", "max_tokens"] = Field("actual", description="max_tokens: OpenAI's admission rule")
    quantum_s: float = Field(60.0, gt=0, le=60, description="enforce the minute's limits in slices this long")


class BatchModeConfig(StrictModel):
    """rewrite.mode: batch, the provider's Batch API (soulray/llm/batch.py); limits are OpenAI's."""

    price_factor: float = Field(0.5, gt=0, description="batch price = online price × this (OpenAI: 50%)")
    prices: dict[str, Price] = Field(default_factory=dict, description="batch prices per model (override the factor)")
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)
    max_bytes_per_file: int = Field(200 * 1024 * 1024, ge=4096, le=200 * 1024 * 1024)
    poll_s: float = Field(30.0, gt=0, description="first poll interval; ×1.5 while nothing changes")
    poll_max_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0, description="resubmissions of a failed or expired request before it is a reject")
    local_time_scale: float = Field(1.0, gt=0, description="base_url local: simulated seconds per real second")
    local_latency_s: float = Field(3600.0, ge=0, description="base_url local: simulated time a batch takes")
    local_queue_tokens: int | None = Field(None, ge=1, description="base_url local: the server's queue limit")


class RewriteConfig(StrictModel):
    enabled: bool = True
    mode: Literal["online", "batch"] = Field("online", description="batch: the provider's Batch API (half price, "
                                             "results within 24 h, resumable)")
    batch: BatchModeConfig = BatchModeConfig()
    dry_run: bool = Field(False, description="estimate tokens and cost of the rewrite; call nothing, publish nothing")
    prompt: str = Field("soulchat-v1", description="a builtin prompt version or a template file")
    base_url: str = Field("local", description="'local' (embedded offline server) or an OpenAI-compatible /v1 URL")
    models: list[ModelShare] = Field(default_factory=lambda: [ModelShare(name="gpt-3.5-turbo")], min_length=1)
    keys: list[ApiKey] = Field(default_factory=lambda: [ApiKey(name="local", rpm=100_000, tpm=100_000_000,
                                                               max_concurrent=256)], min_length=1)
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(2048, ge=16, description="the cap on max_tokens; each call sends a budget learned from "
                                                     "past completions, at most this")
    max_tokens_quantile: float = Field(0.99, gt=0, le=1, description="a call's max_tokens: this quantile of the "
                                                                     "completion lengths learned so far…")
    max_tokens_margin: float = Field(1.25, ge=1, description="…times this margin (a cut completion is re-asked "
                                                              "with twice the budget)")
    min_turns: int = Field(8, ge=2, description="utterances, user and counselor together")
    max_turns: int = Field(20, ge=2)
    max_reasks: int = Field(2, ge=0, description="re-ask a malformed completion (new seed) this many times")
    max_retries: int = Field(6, ge=0, description="retries of 408/409/429/5xx/timeouts per call")
    timeout_s: float = Field(120.0, gt=0, description="hard deadline per call")
    budget_usd: float | None = Field(None, ge=0, description="stop issuing calls before spending more")
    # 5%: with max_retries 6 a call only fails after ~30 s of backoff against an endpoint that keeps
    # failing, so a healthy run has ~0 such rows; 5% lets a large run ride out a short blip (its rows are
    # rejects a rerun fills from the cache) while an outage, which fails tens of percent or all, publishes
    # nothing and leaves `latest` where it was.
    max_failure_share: float = Field(0.05, ge=0, le=1, description="refuse to publish when more than this share of "
                                     "the rows sent to the rewrite failed for infrastructure reasons (retries "
                                     "exhausted on 5xx/timeouts/429s, no usable key, 401/403/404), not content")
    actors: int = Field(2, ge=1)
    actor_num_cpus: float = Field(0.25, gt=0, description="I/O-bound: a fraction of a CPU (DESIGN.md)")
    concurrency_per_actor: int = Field(32, ge=1)
    batch_size: int = Field(32, ge=1)
    local_server: LocalServerConfig = LocalServerConfig()


# ---- filters and clean (soulray/filters/, soulray/clean.py, jobs/clean.py) ----------------------------------
# A chain is an ordered list of filter specs; each spec names its filter (`name`) and sets its parameters.
# Defaults follow the SoulChat (EMNLP 2023 Findings) and SMILE (EMNLP 2024 Findings) papers; soulray/filters/ cites each rule.

PiiType = Literal["email", "url", "id", "bankcard", "phone", "ip", "qq", "wechat"]
Role = Literal["user", "assistant"]

# SMILE's forum-word replacements, in its order. Each is a whole-word rule (jieba segmentation): "题主"
# inside "问题主要" is no forum word, and replacing it corrupted text ("问你要"). SMILE also dropped every
# fragment containing 抱抱; that cut advice such as "请你静下心来，抱抱自己", so hug greetings are now one
# of the template markers below instead.
SMILE_FORUM_RULES = [("楼主你", "你"), ("题主你", "你"), ("楼主", "你"), ("题主", "你"), ("阿凉", "我"), ("答主", "人")]
# Self-harm and suicide vocabulary (incl. SoulChat's 自杀 and 跳楼). A term counts where it stands on a
# jieba word boundary at its start or its end: 想死 in 只想/死 and 自杀 in 自杀未遂 count, 自伤 in 独自/伤心
# (inside two other words) does not. 想去死, 求死, 死了算了, 活着没意思 are how clients of the SMILECHAT
# sample wrote it where none of the older terms matched (smile-36270, 27639, 55889).
CRISIS_TERMS = ["自杀", "轻生", "自尽", "寻死", "想死", "想去死", "求死", "不想活", "活不下去", "活着没意思", "死了算了",
                "结束生命", "结束自己的生命", "了结自己", "割腕", "跳楼", "跳河", "上吊", "吞药", "自残", "自伤",
                "伤害自己", "遗书"]
# Crisis talk no single term holds (RE2), each from a sample dialogue the terms missed: cutting oneself
# (smile-10215), "不如早点死了" (41967), "有时想想死亡" (50652: jieba reads 想想/死亡, so 想死 does not
# count there), "死了就会解脱吗" (36328), "害怕自己会走极端" (15076), the counselor's "不要做傻事" (36328).
CRISIS_PATTERNS = [r"[割划]伤?自己的?(?:手|胳膊|手臂|手腕|大腿|身体)", r"不如(?:早点)?死了", r"想(?:想|到|过)死亡",
                   r"死了?[就才]?(?:会|能|可以)?解脱", r"[怕想]自己会?(?:走极端|做傻事)", r"不要做傻事"]
# Where a term is not about self-harm (RE2; a term inside one of these matches does not count): the
# counselor's 不伤害自己 as a rule of conduct, someone else hurting one, hurting one's own pride or
# child. Figurative uses these miss stay hits: crisis_review is for a person to read, so a doubtful
# hit is kept (bench/RESULTS.md lists them).
CRISIS_EXCEPTIONS = [r"(?:^|[^再])不伤害自己", r"伤害自己的(?:自尊|孩子|利益|感情|自信|尊严)",
                     r"(?:别人|他人|对方|父母)会?伤害自己"]
AI_DISCLOSURE_PATTERNS = [
    r"作为(?:一个|一名|一位)?(?:AI|ai|人工智能|语言模型|AI语言模型|AI助手|智能助手|聊天机器人|虚拟助手|机器人)",
    r"我(?:只)?是(?:一个|一名)?(?:AI|ai|人工智能|语言模型|AI语言模型|AI助手|聊天机器人|虚拟助手|机器人)",
    r"(?:人工智能|AI)语言模型",
    r"(?i)as an ai|language model",
]
# SoulChat screened the string 我是; in SMILECHAT's counselor turns 32 of 34 such rows were ordinary speech
# ("告诉自己：“我是重要的”", "如果我是你的话", "我是谁"). What the screen is for: the counselor saying it
# is an AI, a model, an assistant or a bot, or introducing itself by a role name ("你好，我是你的支持者。").
SELF_INTRODUCTION_PATTERNS = [
    r"我(?:只|就)?是(?:一个|一名|一位|一款|个)?(?:AI|ai|人工智能|语言模型|智能助手|AI助手|助手|聊天机器人|机器人|"
    r"虚拟助手|bot|Bot|程序)",
    r"我是(?:你的|您的|一名|一位|一个|这里的|本次的|今天的)?(?:专业的?)?(?:心理)?(?:咨询师|咨询顾问|治疗师|心理医生|"
    r"心理学家|支持者|倾听者|陪伴者)",
]
# Forum and template leftovers in counselor turns (SMILECHAT's answers were forum posts: "谢邀", letters
# opening "见字如面", hugs, the client addressed as "求助者，"). Normalised: the marker and the punctuation
# after it are cut where it stands at the start of a sentence (\1 keeps what came before), and never where
# the cut would leave a turn without words. Scored: stock empathy openings, a style choice, as
# marker_stock_opening (counselor turns opening with one). The run report shows each marker's share
# before and after (soulray/filters/template.py, MARKERS).
_SENTENCE_START = r"(^|[。！？!?…～~\n])\s*"
_CLAUSE_END = r"[！!。，,～~…\s\x{FE0F}]*"
_NOT_CLAUSE = r"[^。！？!?…～~，,\n]"
_HUG = rf"(?:先|想|很想|好想)?抱抱(?:你|啊|呀|哦|{_NOT_CLAUSE[:-1]}自己它她他我]{{0,10}}的你?)?"
_HUG_OFFER = rf"(?:先|想|很想|好想|我想|我先)?(?:给你|送你|送上)(?:一个|一份)?{_NOT_CLAUSE}{{0,8}}抱抱"
# a counselor turn opening with a stock empathy formula (the sample's most shared first sentences)
STOCK_OPENING = r"^(?:你好|您好|亲爱的)?[，,！!。～~]?(?:非常|很|完全)?(?:能|可以)?(?:理解|明白|了解)(?:你|您)的(?:心情|感受)"
TEMPLATE_RULES = [  # in order: a hug before the 谢邀 or 见字如面 it precedes ("【抱抱】见字如面！")
    ("hug", r"()(?:【抱抱】|\[抱抱\]|\[拥抱\]|#hug#)", "normalise"),
    ("hug", rf"{_SENTENCE_START}(?:{_HUG}|{_HUG_OFFER})[。！？!?…～~，,]+", "normalise"),
    ("hug", rf"([，,])(?:{_HUG}|{_HUG_OFFER})[，,]", "normalise"),
    ("xie_yao", rf"(^|[。！？!?…～~\n，,])\s*(?:首先)?(?:谢邀|(?:非常)?(?:感谢|谢谢)(?:你的|您的)?邀请(?:回答)?(?:和信任)?)"
                rf"{_CLAUSE_END}", "normalise"),
    ("jian_zi_ru_mian", rf"{_SENTENCE_START}见字如面{_CLAUSE_END}", "normalise"),
    ("vocative_client", rf"{_SENTENCE_START}(?:亲爱的)?(?:求助者|来访者)[，,]\s*", "normalise"),
    ("analysis_template", r"()以下是我的(?:分析|回答|看法)[:：]\s*", "normalise"),
    ("stock_opening", STOCK_OPENING, "score"),
]


class ReplaceRule(StrictModel):
    pattern: str = Field(min_length=1)
    replacement: str = ""
    regex: bool = Field(False, description="pattern is an RE2 regular expression, not literal text")
    whole_word: bool = Field(False, description="literal only: the pattern's first word must be a whole word of "
                                                "the text (jieba): 题主 in 题主你好, not in 问题主要")


class ForumWordsSpec(StrictModel):
    name: Literal["forum_words"]
    rules: list[ReplaceRule] = Field(default_factory=lambda: [ReplaceRule(pattern=p, replacement=r, whole_word=True)
                                                              for p, r in SMILE_FORUM_RULES])

    @model_validator(mode="after")
    def _whole_words_are_literal(self) -> ForumWordsSpec:
        for index, rule in enumerate(self.rules):
            if rule.whole_word and rule.regex:
                raise ValueError(f"rules.{index}: whole_word applies to literal patterns, not regex ones")
        return self


class MarkerRule(StrictModel):
    marker: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the marker's name in flags, scores and reasons")
    pattern: str = Field(min_length=1, description="RE2, matched in counselor turns")
    action: Literal["normalise", "score", "reject"] = Field(
        description="normalise: replace the match with `replacement` (\\1 … refer to groups); score: count matching "
                    "turns as marker_<marker>; reject: drop the row as marker_<marker>")
    replacement: str = Field(r"\1", description="normalise only")


class TemplateMarkersSpec(StrictModel):
    name: Literal["template_markers"]
    rules: list[MarkerRule] = Field(default_factory=lambda: [MarkerRule(marker=m, pattern=p, action=a)
                                                             for m, p, a in TEMPLATE_RULES])


class LengthCapSpec(StrictModel):
    name: Literal["length_cap"]
    max_chars: int = Field(1800, ge=1, description="all of a row's text together (SMILE: 1,800)")


class TooShortSpec(StrictModel):
    name: Literal["too_short"]
    min_user_chars: int = Field(5, ge=0, description="question + description, or all user turns")
    min_assistant_chars: int = Field(10, ge=0, description="answer, or all counselor turns")


class PiiSpec(StrictModel):
    name: Literal["pii_redact"]
    types: list[PiiType] = Field(default_factory=lambda: ["email", "url", "id", "bankcard", "phone", "ip", "qq",
                                                          "wechat"])
    context_chars: int = Field(8, ge=0, le=40, description="QQ/WeChat IDs count within this many chars of a "
                                                            "context word; order words this close veto numbers")


class CrisisSpec(StrictModel):
    name: Literal["crisis_screen"]
    terms: list[str] = Field(default_factory=lambda: list(CRISIS_TERMS),
                             description="literal; each counts on a jieba word boundary at its start or end")
    patterns: list[str] = Field(default_factory=lambda: list(CRISIS_PATTERNS), description="RE2, matched as is")
    exceptions: list[str] = Field(default_factory=lambda: list(CRISIS_EXCEPTIONS),
                                  description="RE2: a term inside a match of one of these does not count")
    action: Literal["reject", "flag"] = Field(
        "reject", description="reject: into the reject table as crisis_review, with the terms, for review; "
                              "flag: keep, with 'crisis_screen' in flags")


class BlocklistSpec(StrictModel):
    name: Literal["ethics_blocklist"]
    terms: list[str] = Field(default_factory=lambda: ["自杀", "跳楼"], description="SoulChat's strings, literal")
    patterns: list[str] = Field(default_factory=lambda: list(SELF_INTRODUCTION_PATTERNS),
                                description="RE2: SoulChat's 我是, narrowed to self-identification")
    roles: list[Role] = Field(default_factory=lambda: ["assistant"],
                              description="whose text is screened; a user saying 我是… is no ethics problem")


class DialogueFormatSpec(StrictModel):
    name: Literal["dialogue_format"]
    min_turns: int = Field(4, ge=2, description="utterances, user and counselor together; 8-20 is SoulChat's "
                                               "instruction to the rewriting model (rewrite.min_turns/max_turns)")
    max_turns: int | None = Field(None, ge=2, description="none: long dialogues are bounded by length_cap")


class DialogueRepairSpec(StrictModel):
    name: Literal["dialogue_repair"]
    max_user_chars: int = Field(TurnLimits.max_user_chars, ge=1, description="merge same-role turns only within "
                                                                               "turn_length's limits")
    max_first_user_chars: int = Field(TurnLimits.max_first_user_chars, ge=1)
    max_assistant_chars: int = Field(TurnLimits.max_assistant_chars, ge=1)


class AiDisclosureSpec(StrictModel):
    name: Literal["ai_disclosure"]
    patterns: list[str] = Field(default_factory=lambda: list(AI_DISCLOSURE_PATTERNS), description="RE2 regexes")


class AdviceListSpec(StrictModel):
    name: Literal["advice_list"]
    min_items: int = Field(2, ge=1, description="item markers (1. 2、 （3）…) that make a counselor turn a list")
    max_rate: float = Field(0.25, ge=0, le=1, description="drop above this share of counselor turns as lists")


class RepetitionSpec(StrictModel):
    name: Literal["repetition"]
    ngram: int = Field(10, ge=2, description="characters per n-gram")
    max_ratio: float = Field(0.2, ge=0, le=1, description="drop above this share of repeated n-grams (SMILECHAT "
                                                          "p99.5: 0.08; looping dialogues: 0.5+)")


class CjkRatioSpec(StrictModel):
    name: Literal["cjk_ratio"]
    min_ratio: float = Field(0.5, ge=0, le=1, description="Chinese characters among letters and digits")


class TurnLengthSpec(StrictModel):
    name: Literal["turn_length"]
    max_user_chars: int = Field(TurnLimits.max_user_chars, ge=1)
    max_first_user_chars: int = Field(TurnLimits.max_first_user_chars, ge=1,
                                      description="the first user turn carries the source question")
    max_assistant_chars: int = Field(TurnLimits.max_assistant_chars, ge=1,
                                     description="about SoulChat's 512 training output tokens")


class LengthRatioSpec(StrictModel):
    name: Literal["length_ratio"]
    max_ratio: float = Field(8.0, gt=0, description="mean counselor turn over mean user turn (after the first)")
    min_counselor_chars: float = Field(200, ge=0, description="a counselor whose turns average fewer characters "
                                                              "is no lecturer, however short the client's replies")


FilterSpec = Annotated[ForumWordsSpec | LengthCapSpec | TooShortSpec | PiiSpec | CrisisSpec | BlocklistSpec
                       | DialogueFormatSpec | DialogueRepairSpec | TemplateMarkersSpec | AiDisclosureSpec
                       | AdviceListSpec | RepetitionSpec | CjkRatioSpec | TurnLengthSpec | LengthRatioSpec,
                       Field(discriminator="name")]
DIALOGUE_ONLY_FILTERS = ("dialogue_format", "dialogue_repair", "advice_list", "turn_length", "length_ratio")
# A whole dialogue's characters: about twice the longest of the 2,000 sample dialogues (2,385; p99.9 2,181),
# and more than per-turn training keeps of a history (SoulChat: 1,536 input tokens).
MAX_DIALOGUE_CHARS = 4000


def _default_source_chain() -> list[FilterSpec]:
    # rewrite text first (so every later detail quotes redacted text), then the cheap drops
    return [ForumWordsSpec(name="forum_words"), TemplateMarkersSpec(name="template_markers"), PiiSpec(name="pii_redact"),
            LengthCapSpec(name="length_cap"), TooShortSpec(name="too_short"), CrisisSpec(name="crisis_screen")]


def _default_dialogue_chain() -> list[FilterSpec]:
    # rewrite text first (forum words, template markers, PII), then repair the structure of what is left,
    # then judge it: a row is rejected only for what no repair or normalisation fixed
    return [PiiSpec(name="pii_redact"), ForumWordsSpec(name="forum_words"), TemplateMarkersSpec(name="template_markers"),
            DialogueRepairSpec(name="dialogue_repair"), DialogueFormatSpec(name="dialogue_format"),
            LengthCapSpec(name="length_cap", max_chars=MAX_DIALOGUE_CHARS), CrisisSpec(name="crisis_screen"),
            BlocklistSpec(name="ethics_blocklist"), AiDisclosureSpec(name="ai_disclosure"),
            AdviceListSpec(name="advice_list"), TurnLengthSpec(name="turn_length"),
            LengthRatioSpec(name="length_ratio"), RepetitionSpec(name="repetition"), CjkRatioSpec(name="cjk_ratio")]


class FiltersConfig(StrictModel):
    source: list[FilterSpec] = Field(default_factory=_default_source_chain,
                                     description="on rewrite units, after normalise, before the rewrite")
    dialogue: list[FilterSpec] = Field(default_factory=_default_dialogue_chain,
                                       description="on dialogues, after the rewrite (and in the clean job)")

    @model_validator(mode="before")
    @classmethod
    def _overrides_on_default_chains(cls, data: Any) -> Any:
        """`--set filters.dialogue.1.min_turns=4` with no chain in the file arrives as {"1": {…}}: it
        patches that filter of the default chain, so one threshold can change without restating the list."""
        if not isinstance(data, dict):
            return data
        for key, default in (("source", _default_source_chain), ("dialogue", _default_dialogue_chain)):
            patches = data.get(key)
            if not isinstance(patches, dict) or not all(str(index).isdigit() for index in patches):
                continue
            chain = [spec.model_dump() for spec in default()]
            for index, patch in patches.items():
                if int(index) >= len(chain):
                    raise ValueError(f"{key}.{index}: the default {key} chain has {len(chain)} filters, "
                                     f"0-{len(chain) - 1}: {', '.join(spec['name'] for spec in chain)}")
                chain[int(index)] = {**chain[int(index)], **patch} if isinstance(patch, dict) else patch
            data = {**data, key: chain}
        return data

    @model_validator(mode="after")
    def _source_filters_fit_units(self) -> FiltersConfig:
        for index, spec in enumerate(self.source):
            if spec.name in DIALOGUE_ONLY_FILTERS:
                raise ValueError(f"source.{index}: {spec.name} checks dialogues; put it in the dialogue chain")
        return self


class CleanInput(StrictModel):
    path: str = Field(description="Parquet (file or folder; id, topic, messages) or JSON the importers read")
    format: Literal["auto", "parquet", "smilechat", "soulchatcorpus"] = Field(
        "auto", description="auto: .parquet/folder of Parquet → parquet; a JSON list of objects → soulchatcorpus; "
                            "a JSON list of turns or a folder of .json → smilechat")


class CleanConfig(StrictModel):
    dataset: DatasetName = "cleaned"
    input: CleanInput
    storage: StorageConfig = StorageConfig()
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = Field(default_factory=lambda: DedupConfig())
    dedup_against: str | None = Field(None, description="a published version path: dialogues that duplicate its "
                                                        "rows are rejected")
    limit: int | None = Field(None, ge=1, description="read at most this many dialogues (smoke runs)")

# ---- end filters and clean ------------------------------------------------------------------------------


class RegenerateConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    sources: list[SourceSpec] = Field(min_length=1)
    storage: StorageConfig = StorageConfig()
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    rewrite: RewriteConfig = RewriteConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupJobConfig = Field(default_factory=lambda: DedupJobConfig())
    limit: int | None = Field(None, ge=1, description="read at most this many rewrite units (smoke runs)")


# ---- evaluate (soulray/evaluate, jobs/evaluate.py) -------------------------------------------------------

class DecodingConfig(StrictModel):
    """The paper's decoding (SOULCHAT.md): top-p sampling with p 0.75, temperature 0.95, ≤ 512 new tokens."""

    top_p: float = Field(0.75, gt=0, le=1)
    temperature: float = Field(0.95, gt=0, le=2)
    max_new_tokens: int = Field(512, ge=1)
    max_input_tokens: int = Field(1536, ge=16, description="checkpoints: keep the last this many prompt tokens")
    seed: int = Field(0, description="with the sample id, fixes every sampling draw: reruns give the same text")


class EvalModel(StrictModel):
    """One model to evaluate: a Hugging Face checkpoint folder, or a model behind evaluate.api."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$", description="its label in the report")
    checkpoint: str | None = Field(None, description="a Hugging Face model folder (model + tokenizer), local or s3://")
    endpoint_model: str | None = Field(None, description="a model name served by evaluate.api (OpenAI-compatible)")
    system_prompt: str | None = Field(None, description="endpoint models: a system message before the dialogue")

    @model_validator(mode="after")
    def _one_source(self) -> EvalModel:
        if (self.checkpoint is None) == (self.endpoint_model is None):
            raise ValueError(f"model {self.name}: give exactly one of checkpoint or endpoint_model")
        return self


class CheckpointGenerationConfig(StrictModel):
    """Checkpoints generate in a Ray actor pool, one model copy per actor."""

    actors: int = Field(2, ge=1)
    actor_num_cpus: float = Field(1.0, gt=0, description="also the torch threads of each actor")
    actor_num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="samples generated together (prompts of similar length)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


# The OpenAI-compatible API settings of the rewrite stage, field for field (same names, defaults and checks):
# endpoint models and the judge call through the rewrite stage's broker, cache and accounting.
_API_FIELDS = ("base_url", "keys", "prices", "max_retries", "timeout_s", "budget_usd", "actors", "actor_num_cpus",
               "concurrency_per_actor", "batch_size", "local_server")
ApiConfig = create_model("ApiConfig", __base__=StrictModel, __doc__="An OpenAI-compatible API: endpoint, keys, limits.",
                         **{name: (RewriteConfig.model_fields[name].annotation, RewriteConfig.model_fields[name])
                            for name in _API_FIELDS})


class JudgeConfig(StrictModel):
    """The optional LLM judge: Con./Emp./Hel. 0-2 and Saf. 0-1 per response, as the paper's experts rated."""

    enabled: bool = False
    model: str = Field("gpt-4o-mini", description="a model served by evaluate.api")
    rubric: str = Field("judge-v1", description="a builtin rubric version or a rubric file")
    runs: int = Field(2, ge=1, le=10, description="independent judge runs; two or more give their agreement")
    samples: int | None = Field(100, ge=1, description="responses rated per model (the paper: 100); None: all")
    temperature: float = Field(1.0, ge=0, le=2, description="> 0, so runs are independent raters")
    max_tokens: int = Field(256, ge=16)
    max_reasks: int = Field(2, ge=0, description="re-ask an unparseable rating this many times")
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)


class EvalSplitConfig(StrictModel):
    """Which questions are held out. By default, the split.json beside the first checkpoint that has one
    (what its fine-tuning run kept out of training); else the fine-tuning job's rule with these numbers."""

    split_file: str | None = Field(None, description="a fine-tuning run's split.json (local or s3://)")
    validation_share: float = Field(0.05, gt=0, le=1, description="as finetune samples.validation_share")
    seed: int = Field(0, description="as finetune samples.split_seed")


class EvaluateConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    version: str = Field("latest", description="the published version whose held-out dialogues are scored")
    root: str = Field("output", description="the store root (local folder or s3://bucket/prefix)")
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    models: list[EvalModel] = Field(min_length=1)
    samples: int | None = Field(10_000, ge=1, description="held-out samples (the paper: 10,000); None: all")
    test_set: str | None = Field(None, description="test-set label in the report (default: the dataset)")
    split: EvalSplitConfig = EvalSplitConfig()
    decoding: DecodingConfig = DecodingConfig()
    generation: CheckpointGenerationConfig = CheckpointGenerationConfig()
    api: ApiConfig = ApiConfig()
    judge: JudgeConfig = JudgeConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateConfig:
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        return self

# ---- end evaluate ---------------------------------------------------------------------------------------


# ---- finetune (soulray/train, soulray/finetune.py, jobs/finetune.py) ---------------------------------------

class TinyModelConfig(StrictModel):
    """The embedded default model: a small Llama-architecture causal LM built from this config, with a
    byte-level BPE tokenizer trained on the training split itself, so the stage runs offline."""

    vocab_size: int = Field(2048, ge=300, description="tokenizer vocabulary (256 bytes + merges + specials)")
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(172, ge=8)
    tokenizer_dialogues: int = Field(2000, ge=1, description="train the tokenizer on at most this many dialogues")


class LoraSettings(StrictModel):
    """LoRA as MeChat used it (SOULCHAT.md): r 16, alpha 64, dropout 0.1."""

    r: int = Field(16, ge=1)
    alpha: float = Field(64.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="None: peft's default for the architecture")


class FinetuneModelConfig(StrictModel):
    path: str | None = Field(None, description="a Hugging Face causal LM folder, local or s3://; None: the tiny model")
    trust_remote_code: bool = Field(False, description="allow the model folder's own code (e.g. ChatGLM)")
    tiny: TinyModelConfig = TinyModelConfig()
    lora: LoraSettings | None = Field(None, description="set to train LoRA adapters instead of every weight")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast on GPUs; CPUs train in fp32")


class FinetuneSamplesConfig(StrictModel):
    mode: Literal["per_turn", "whole_dialog"] = Field(
        "per_turn", description="per_turn: a sample per counselor turn (the paper); whole_dialog: one per dialogue")
    format: Literal["soulchat", "chat_template"] = Field(
        "soulchat", description="soulchat: 用户：…\\n心理咨询师：…; chat_template: the model's own template")
    max_input_tokens: int = Field(1536, ge=1, description="prompt budget per target (SoulChat: 1,536)")
    max_output_tokens: int = Field(512, ge=1, description="target budget (SoulChat: 512)")
    validation_share: float = Field(0.05, gt=0, lt=1, description="share of question_ids held out")
    split_seed: int = 0
    limit: int | None = Field(None, ge=1, description="use at most this many dialogues (smoke runs)")


class OptimConfig(StrictModel):
    """AdamW with DeepSpeed's WarmupDecayLR; SoulChat's numbers by default."""

    steps: int = Field(30_000, ge=1)
    warmup_steps: int = Field(1_000, ge=0)
    max_lr: float = Field(5e-5, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_type: Literal["log", "linear"] = Field("log", description="DeepSpeed's default is log")
    global_batch_size: int = Field(80, ge=1, description="samples per optimizer step, whatever the worker count")
    micro_batch_size: int = Field(4, ge=1, description="samples per forward pass on one worker")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0


class FinetuneTrainerConfig(StrictModel):
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="also each worker's torch threads (rounded up)")
    log_every: int = Field(10, ge=1, description="report loss, lr, tokens/s every this many steps")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validation_batches: int = Field(8, ge=0, description="validation loss at each checkpoint over this many batches")
    max_failures: int = Field(0, ge=-1, description="worker failures Ray Train recovers from (-1: unlimited)")
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage of the DeepSpeed config written for GPU clusters")


class FinetuneConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    version: str = Field("latest", description="the published version to train on")
    root: str = Field("output", description="the store root (local folder or s3://bucket/prefix); runs go "
                                            "under <root>/<dataset>/finetune/<run_name>")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                                 description="None: a new run; an existing run's name resumes it")
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    model: FinetuneModelConfig = FinetuneModelConfig()
    samples: FinetuneSamplesConfig = FinetuneSamplesConfig()
    optim: OptimConfig = OptimConfig()
    trainer: FinetuneTrainerConfig = FinetuneTrainerConfig()

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> FinetuneConfig:
        per_step = self.optim.micro_batch_size * self.trainer.workers
        if self.optim.global_batch_size % per_step:
            raise ValueError(f"optim.global_batch_size {self.optim.global_batch_size} must be a multiple of "
                             f"optim.micro_batch_size × trainer.workers = {per_step}")
        return self

# ---- end finetune ---------------------------------------------------------------------------------------


# ---- dedup (soulray/dedup) ------------------------------------------------------------------------------

class DedupConfig(StrictModel):
    """Exact and MinHash-LSH near-duplicate marking. Signatures equal datasketch 2.0's
    `MinHash(num_perm, seed, scheme="affine32", hashfunc=<hash_function>)` over the shingles of the
    normalised text (soulray/dedup/minhash.py says exactly what that means)."""

    enabled: bool = True
    method: Literal["exact", "minhash"] = Field("minhash", description="exact: content hash only; minhash: "
                                                                       "exact plus near duplicates")
    # Defaults measured on real Chinese dialogues (bench/dedup.py --only drift, bench/RESULTS.md "Near-duplicate
    # dialogues"): copies within 5% character edits of a SMILECHAT dialogue have character-3-gram Jaccard
    # >= 0.75 (5-grams: >= 0.61, so the old 0.8 on 5-grams found half of them), while distinct dialogues,
    # even ten answers to one question, stay <= 0.29. 3-grams at 0.7 leave margin on both sides. 256
    # permutations, because a threshold this low needs short bands: at 128 (21 x 6) recall was 0.9975 but
    # 1M templated synthetic units formed one candidate component of 79,359 rows (resolved by one task);
    # at 256 (36 x 7) recall is 1.000, the largest component 298 rows, for the same CPU seconds
    # (fingerprint +10%, resolve -40%) and 37 band keys a row to shuffle instead of 22.
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of shingle sets")
    num_perm: int = Field(256, ge=2, le=1024)
    seed: int = Field(1, ge=0, description="datasketch's default seed")
    hash_function: Literal["sha1_32", "murmur3_32"] = Field(
        "sha1_32", description="sha1_32 is datasketch's default hashfunc; murmur3_32 (mmh3, seed 0) is faster")
    shingle: Literal["char", "word"] = Field("char", description="char n-grams, or n-grams of jieba words")
    ngram: int = Field(3, ge=1, le=32, description="shingle size (characters, or words)")
    bands: int | None = Field(None, ge=2, description="LSH bands; with rows, overrides datasketch's choice")
    rows: int | None = Field(None, ge=1, description="values per band")
    # Recall-weighted bands (36 x 7 at 0.7 and 256 permutations: a pair at Jaccard 0.75 is a candidate with
    # p = 0.994, against 0.77 for datasketch's (0.5, 0.5) choice, 25 x 10), then every candidate checked by
    # true Jaccard, so
    # the extra candidates cost no precision. Only candidate rows ship their texts to be checked.
    weights: tuple[float, float] = Field((0.05, 0.95), description="false positive / false negative weights "
                                                                   "of datasketch's parameter search")
    verify: Literal["none", "signature", "jaccard"] = Field(
        "jaccard", description="drop candidate pairs below threshold by true Jaccard of the shingle sets "
                               "(ships candidate rows' texts), by the signatures' estimate (free, but a "
                               "+-0.035 estimate at 128 permutations), or none (every LSH candidate)")
    keep: Literal["lowest_record_id", "longest"] = Field(
        "lowest_record_id", description="which row of a cluster stays: lowest record_id, or longest text "
                                        "(then lowest record_id)")
    num_partitions: int | None = Field(None, ge=1, description="shuffle partitions (default: 2 x CPUs)")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then datasketch's choice is used)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        if abs(sum(self.weights) - 1.0) > 1e-9 or min(self.weights) < 0:
            raise ValueError("weights must be two non-negative numbers summing to 1")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): as given, else what datasketch's MinHashLSH would choose."""
        from soulray.dedup.lsh import optimal_params

        if self.bands is not None:
            return self.bands, self.rows
        return optimal_params(self.threshold, self.num_perm, tuple(self.weights))


class DedupJobConfig(StrictModel):
    """Dedup in the regenerate job: sources before the rewrite (each distinct answer is paid for once)
    and dialogues after it; optionally against a published version."""

    # Units are question + description + answer, and one long question answered briefly by several
    # counselors reaches Jaccard 0.86 on that text (SMILECHAT sample): at the dialogue defaults source dedup
    # would glue 13 of 2,000 distinct units (0.65%); 5-grams at 0.8 glue 2 (bench/RESULTS.md).
    source: DedupConfig = Field(default_factory=lambda: DedupConfig(ngram=5, threshold=0.8, num_perm=128))
    dialogue: DedupConfig = Field(default_factory=lambda: DedupConfig())
    against: str | None = Field(None, description="a published version path (…/<dataset>/versions/<id>): new rows "
                                                  "that duplicate its rows are rejected")


# ---- end dedup ------------------------------------------------------------------------------------------


ModelT = TypeVar("ModelT", bound=BaseModel)


def load_config(model: type[ModelT], path: str | Path | None, overrides: list[str] = ()) -> ModelT:
    """Read `path` (YAML), apply `key.path=value` overrides, validate against `model`."""
    origin = str(path) if path else "<defaults>"
    if overrides:
        # keys only: an override's value may be exactly the secret we are about to refuse
        origin += " with --set " + ", ".join(override.partition("=")[0] for override in overrides)
    raw: dict[str, Any] = {}
    if path:
        raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    _refuse_secrets(raw, origin)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def named_secrets(config: BaseModel) -> list[tuple[str, str]]:
    """(config key, value) of every secret reference in `config`: fields named `*_env` (an env var's
    name) and `api_key_file` (a file's path), anywhere in the tree."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                value, key = getattr(node, name), f"{where}.{name}" if where else name
                if (name.endswith("_env") or name == "api_key_file") and isinstance(value, str):
                    found.append((key, value))
                else:
                    walk(value, key)
        elif isinstance(node, (list, tuple)):
            for index, item in enumerate(node):
                walk(item, f"{where}.{index}")
        elif isinstance(node, dict):
            for key, item in node.items():
                walk(item, f"{where}.{key}")

    walk(config, "")
    return found


def secret_env_names(config: BaseModel) -> list[str]:
    """The names of every env var this config reads a secret from (fields named `*_env`, anywhere)."""
    return sorted({value for key, value in named_secrets(config) if key.endswith("_env")})


# How env vars are conventionally named; a name that is not shaped so may be a pasted key: never shown.
_SHOWABLE_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def check_named_secrets(config: BaseModel) -> None:
    """Every secret the config names is there: its env var set and not empty, its file readable and
    not empty. Run on the driver before Ray or any pipeline starts (and the workers check again when
    they resolve the secret). The error names the config key and the variable, never a value."""
    import os

    missing = []
    for key, reference in named_secrets(config):
        if key.endswith("_env"):
            if not os.environ.get(reference):
                shown = reference if _SHOWABLE_ENV_NAME.match(reference) else "(name not shown: it is not shaped " \
                                                                              "like a variable name)"
                missing.append(f"{key}: environment variable {shown} is not set")
        else:
            path = Path(reference).expanduser()
            if not path.is_file() or not os.access(path, os.R_OK) or path.stat().st_size == 0:
                missing.append(f"{key}: {redact(str(path))} is missing, unreadable or empty")
    if missing:
        raise ConfigError("secrets named in the config are not available here (set them on every node, the "
                          "driver's included): " + "; ".join(missing))


def config_hash(config: BaseModel) -> str:
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:index + 1])} is not an index of the list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:index + 1])} is not a section")


def _refuse_secrets(node: Any, origin: str, where: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_secrets(value, origin, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _refuse_secrets(value, origin, f"{where}.{index}")
    elif isinstance(node, str) and (kind := find_secret(node)):
        raise ConfigError(
            f"{origin}: {where}: this looks like a secret value ({kind}; the value is not shown). Configs hold "
            "only references: put the secret in an environment variable and give its name (e.g. api_key_env, "
            "access_key_id_env), or in a file (api_key_file); an endpoint takes its key from those, not its URL."
        )


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<top level>"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif key.endswith("_env") or key.endswith("_file"):  # a wrong reference may be a pasted secret
            message = f"{error['msg']} (the value is not shown: it may be a secret)"
        else:
            message = f"{error['msg']} (got {_shorten(error.get('input'))})"
        lines.append(f"  {key}: {message}")
    return redact("\n".join(lines))


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
