"""Secret shapes: what a credential looks like inside any text, found (to refuse a config value) and
redacted (from every error message, log line and manifest). One place, so the config refuser and the
redactor never disagree about what a secret is.

The shapes: provider keys (OpenAI-style `sk-…`, AWS access key ids `AKIA…`/`ASIA…`), a password in a
URL (`https://user:pass@host`), a credential in a URL's query string (`?api-key=…`, `&sig=…`), and long
random-looking tokens: 32+ hex digits (Azure OpenAI keys are 32 hex) or 32+ base64/URL-safe characters
mixing upper case, lower case and digits (AWS secret keys, most bearer tokens). File paths, dataset
names and version ids (`20261129T043733Z-6cbfe6`) have none of these shapes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

# name → pattern; each pattern's group "secret" (or the whole match) is what gets redacted
_SHAPES: dict[str, re.Pattern[str]] = {
    "an API key (sk-…)": re.compile(r"(?<![A-Za-z0-9])(?P<secret>sk-[A-Za-z0-9_-]{16,})"),
    "an AWS access key id": re.compile(r"(?<![A-Z0-9])(?P<secret>(?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Z0-9])"),
    "a password in a URL": re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:(?P<secret>[^/\s@]+)@"),
    "a credential in a URL query string": re.compile(
        r"[?&;](?:[A-Za-z0-9_.-]*(?:key|token|secret|password|passwd|pwd|auth|sig|signature|credential)"
        r"[A-Za-z0-9_.-]*)=(?P<secret>[^&#\s]+)", re.IGNORECASE),
    "a long hex token": re.compile(r"(?<![A-Za-z0-9])(?P<secret>[0-9a-fA-F]{32,})(?![A-Za-z0-9])"),
    # no "/" in the run: paths mix cases and digits too; an AWS secret key (40 chars with / and +) is
    # caught whole by the next shape, and a base64 token split by "/" still leaves one long run
    "a long random token": re.compile(
        r"(?<![A-Za-z0-9+=_-])(?P<secret>(?=[A-Za-z0-9+=_-]*[a-z])(?=[A-Za-z0-9+=_-]*[A-Z])"
        r"(?=(?:[A-Za-z0-9+=_-]*[0-9]){2})[A-Za-z0-9+=_-]{32,})(?![A-Za-z0-9+=_-])"),
    "an AWS secret access key": re.compile(
        r"(?<![A-Za-z0-9/+])(?P<secret>(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[0-9])"
        r"(?=[A-Za-z0-9/+]*[/+])[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
}


def find_secret(text: str) -> str | None:
    """What kind of secret `text` holds somewhere (e.g. "a password in a URL"), or None."""
    for kind, pattern in _SHAPES.items():
        if pattern.search(text):
            return kind
    return None


def redact(text: str) -> str:
    """`text` with every secret shape replaced by [redacted] (a URL keeps its host, a query its key)."""
    for pattern in _SHAPES.values():
        text = pattern.sub(_redact_match, text)
    return text


def redact_tree(node: Any) -> Any:
    """`redact` over every string of a JSON-like tree (a manifest's config, a report)."""
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, dict):
        return {key: redact_tree(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_tree(value) for value in node]
    return node


def _redact_match(match: re.Match[str]) -> str:
    start, end = match.span("secret")
    whole = match.group(0)
    return whole[:start - match.start()] + REDACTED + whole[end - match.start():]


class RedactingFilter(logging.Filter):
    """Redacts every record that passes a handler: installed on the CLI's log handlers and, through
    `install_log_redaction`, in each Ray worker process that runs soulray code."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction() -> None:
    """Put a RedactingFilter on every handler of the root logger (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
