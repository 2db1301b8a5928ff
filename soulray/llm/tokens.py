"""Token counts without a download (tiktoken fetches its tables at first use, which fails offline).

An approximation of cl100k-style counts: each CJK character ≈ 1 token, other text ≈ 1 token per 4
characters, plus a few tokens of chat framing per message. Used for reservations before a call (the
real usage settles the account afterwards) and by the local server to report usage.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
MESSAGE_OVERHEAD = 4


def count_tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def count_message_tokens(messages: list[dict[str, str]]) -> int:
    return sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages) + 3


def estimate_tokens(messages: list[dict[str, str]], source_chars: int, max_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens expected before a call: a rewrite is about as long as its source
    answer plus the dialogue around it (2 tokens a source character + 200 of framing), at most max_tokens."""
    return count_message_tokens(messages), min(max_tokens, 2 * source_chars + 200)
