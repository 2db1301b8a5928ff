"""Dialogue repairs: fix a dialogue's structure instead of rejecting it, in the parser and in the chain.

SMILECHAT's dialogues (ChatGPT rewrites of PsyQA answers) end with the client in 14% of the shared
sample, nearly always a complete dialogue followed by the client's thanks ("谢谢你的鼓励，我会努力的。");
fresh rewrites do the same, and a few hold two turns of one role in a row or open with the counselor.
Each is repaired here, by a pure plan over roles and lengths that both the rewrite parser
(soulray/rewrite/parse.py) and the dialogue chain (soulray/filters/repair.py) apply; what is left is
then judged by the same rules as any dialogue, and rejected only if it fails them.

A repair keeps every other utterance as it was (byte-identical): it drops leading counselor turns and
trailing client turns, and joins consecutive turns of one role with a line break, only where the joined
turn stays within the turn-length limit (soulray/filters/quality.py, TurnLength).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from soulray.schema import ROLE_ASSISTANT, ROLE_USER

LEADING_COUNSELOR, TRAILING_CLIENT, MERGED_TURNS = "leading_counselor", "trailing_client", "merged_turns"
REPAIRS = (LEADING_COUNSELOR, TRAILING_CLIENT, MERGED_TURNS)
FLAG_PREFIX = "repair:"  # how a repaired row says so in its `flags`: repair:trailing_client, …
MERGE_SEPARATOR = "\n"  # as the parser joins a turn's continuation lines


@dataclass(frozen=True)
class TurnLimits:
    """Characters a turn may hold; the defaults are TurnLengthSpec's (soulray/filters/quality.py)."""

    max_user_chars: int = 500
    max_first_user_chars: int = 1800
    max_assistant_chars: int = 700

    def limit(self, role: str, position: int) -> int:
        if role == ROLE_ASSISTANT:
            return self.max_assistant_chars
        return self.max_first_user_chars if position == 0 else self.max_user_chars


@dataclass(frozen=True)
class Repair:
    groups: list[list[int]]  # the repaired dialogue: each turn is these original turns, joined
    kinds: tuple[str, ...]  # the repairs made, in REPAIRS order; () when the dialogue is left as it was

    @property
    def changed(self) -> bool:
        return bool(self.kinds)


def plan_repair(roles: Sequence[str], lengths: Sequence[int], *, limits: TurnLimits) -> Repair:
    """How to repair a dialogue of these roles and turn lengths (characters). A dialogue with a role
    other than user/assistant, or one that would keep no exchange (a user turn, then a counselor
    turn), is left as it was: its reject reason says more than a repair would."""
    unchanged = Repair([[index] for index in range(len(roles))], ())
    if any(role not in (ROLE_USER, ROLE_ASSISTANT) for role in roles):
        return unchanged
    first_user = next((index for index, role in enumerate(roles) if role == ROLE_USER), None)
    last_counselor = max((index for index, role in enumerate(roles) if role == ROLE_ASSISTANT), default=None)
    if first_user is None or last_counselor is None or last_counselor < first_user:
        return unchanged
    kinds = []
    if first_user > 0:
        kinds.append(LEADING_COUNSELOR)
    if last_counselor < len(roles) - 1:
        kinds.append(TRAILING_CLIENT)
    groups: list[list[int]] = []
    group_chars: list[int] = []
    merged = False
    for index in range(first_user, last_counselor + 1):
        if groups and roles[groups[-1][-1]] == roles[index]:
            joined = group_chars[-1] + len(MERGE_SEPARATOR) + lengths[index]
            if joined <= limits.limit(roles[index], len(groups) - 1):
                groups[-1].append(index)
                group_chars[-1] = joined
                merged = True
                continue
        groups.append([index])
        group_chars.append(lengths[index])
    if merged:
        kinds.append(MERGED_TURNS)
    return Repair(groups, tuple(kinds)) if kinds else unchanged


def repair_messages(messages: list[dict[str, str]], *, limits: TurnLimits) -> tuple[list[dict[str, str]], tuple[str, ...]]:
    """`messages` repaired, and the repairs made (for the parser, which holds plain rows)."""
    plan = plan_repair([message["role"] for message in messages], [len(message["content"]) for message in messages],
                       limits=limits)
    if not plan.changed:
        return messages, ()
    repaired = [messages[group[0]] if len(group) == 1 else
                {"role": messages[group[0]]["role"],
                 "content": MERGE_SEPARATOR.join(messages[index]["content"] for index in group)}
                for group in plan.groups]
    return repaired, plan.kinds
