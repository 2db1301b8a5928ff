"""Completion text → `messages`, or a reject reason.

Accepts what real models write: full- and half-width colons, both role vocabularies (用户/心理咨询师 and
求助者/支持者, plus common variants), blank lines, markdown bold around labels, and a leading analysis
section (the SoulChat prompt asks for one: "请逐步分析…"). Repairs what soulray/repair.py repairs (a
completion that ends with the client's thanks keeps its dialogue, minus the thanks, instead of being
re-asked at a new call's price), and rejects what SMILE rejected and no repair fixed, by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from soulray.repair import TurnLimits, repair_messages
from soulray.schema import ROLE_ASSISTANT, ROLE_USER

USER_LABELS = ("用户", "求助者", "来访者", "访客", "client", "Client", "User", "user")
ASSISTANT_LABELS = ("心理咨询师", "咨询师", "支持者", "counselor", "Counselor", "Therapist", "assistant")
_LABEL = "|".join(re.escape(label) for label in sorted(USER_LABELS + ASSISTANT_LABELS, key=len, reverse=True))
# optional list marker / markdown bold, a role label, a colon of either width
_PREFIX = re.compile(rf"^\s*(?:[-*>]\s*)?(?:\*\*)?(?P<label>{_LABEL})(?:\*\*)?\s*[：:](?:\*\*)?\s*")
_ENGLISH = re.compile(r"[A-Za-z]{2,}(?:[\s,']+[A-Za-z]{2,}){2,}")  # three or more English words in a row
_REFUSAL = re.compile(r"(抱歉|对不起|很遗憾)[，,]?\s*(我)?(无法|不能|没法)(完成|提供|处理|帮助|回答)|"
                      r"I('m| am) sorry,? (but )?I (can(no|')t|am unable)", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    messages: list[dict[str, str]] | None
    reason: str | None = None
    detail: str | None = None
    repairs: tuple[str, ...] = ()  # soulray/repair.py's kinds, when the messages were repaired

    @property
    def ok(self) -> bool:
        return self.messages is not None


def _role(label: str) -> str:
    return ROLE_USER if label in USER_LABELS else ROLE_ASSISTANT


def parse_completion(text: str | None, finish_reason: str | None = "stop", *, min_turns: int = 8,
                     max_turns: int = 20, limits: TurnLimits = TurnLimits()) -> Parsed:
    """Turns are utterances: the paper's 2,300,248 samples over 339,529 dialogues (≈6.8 counselor turns,
    ≈13.6 utterances each) fit "8-20 轮" read as utterances, not as exchanges."""
    if finish_reason == "length":
        return Parsed(None, "truncated", "finish_reason=length: the completion hit max_tokens")
    text = (text or "").strip()
    if not text:
        return Parsed(None, "empty_completion", "the model returned no text")
    turns: list[list[str]] = []  # [role, content]
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _PREFIX.match(line)
        if match:
            content = line[match.end():].strip()
            if _PREFIX.match(content):
                return Parsed(None, "doubled_role_prefix", f"turn {len(turns) + 1}: {line.strip()[:60]}")
            turns.append([_role(match["label"]), content])
        elif turns:
            turns[-1][1] = f"{turns[-1][1]}\n{line.strip()}".strip()
        # lines before the first role label are the analysis section: dropped
    if not turns:
        if _REFUSAL.search(text):
            return Parsed(None, "refusal", text[:80])
        return Parsed(None, "no_role_prefix", "no line starts with a role label")
    return _validate([{"role": role, "content": content} for role, content in turns], min_turns, max_turns, limits)


def _validate(messages: list[dict[str, str]], min_turns: int, max_turns: int, limits: TurnLimits) -> Parsed:
    if len(messages) == 1:
        return Parsed(None, "single_line", "only one utterance")
    for index, message in enumerate(messages):
        if not message["content"]:
            return Parsed(None, "empty_turn", f"turn {index + 1} is empty")
    messages, repairs = repair_messages(messages, limits=limits)
    for index, message in enumerate(messages):
        if index and message["role"] == messages[index - 1]["role"]:
            return Parsed(None, "repeated_role", f"turns {index} and {index + 1} are both {message['role']}")
    if messages[0]["role"] != ROLE_USER:
        return Parsed(None, "not_starting_with_user", "the first utterance is the counselor's")
    if messages[-1]["role"] != ROLE_ASSISTANT:
        return Parsed(None, "not_ending_with_counselor", "the last utterance is the user's")
    if not min_turns <= len(messages) <= max_turns:
        return Parsed(None, "turn_count", f"{len(messages)} utterances, outside {min_turns}-{max_turns}")
    if _ENGLISH.search(messages[-1]["content"]):
        return Parsed(None, "english_in_last_turn", messages[-1]["content"][:60])
    return Parsed(messages, repairs=repairs)


def render_dialogue(messages: list[dict[str, str]], user_label: str = "用户", assistant_label: str = "心理咨询师") -> str:
    """The `用户：…/心理咨询师：…` text form of a dialogue (for prompts, training and tests)."""
    labels = {ROLE_USER: user_label, ROLE_ASSISTANT: assistant_label}
    return "\n".join(f"{labels[m['role']]}：{m['content']}" for m in messages)
