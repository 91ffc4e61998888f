"""A deterministic stand-in tokenizer: words and punctuation marks, each with its leading spaces."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: a word or one punctuation mark with the whitespace before it; the last branch keeps trailing
#: whitespace, so the tokens of a text always join back into exactly that text
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

#: tokens a chat API adds around each message (role markers) and once to prime the reply
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def tokenize(text: str) -> list[str]:
    """The tokens of `text`; "".join(tokenize(t)) == t."""
    return _TOKEN.findall(text)


def token_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token of `text`."""
    return [m.span() for m in _TOKEN.finditer(text)]


def count_tokens(text: str) -> int:
    """How many tokens `text` has."""
    return sum(1 for _ in _TOKEN.finditer(text))


def prompt_tokens(message_texts: Iterable[str]) -> int:
    """Input tokens of a chat request: every message's text plus a small per-message overhead."""
    total = REPLY_PRIMING
    for text in message_texts:
        total += MESSAGE_OVERHEAD + count_tokens(text)
    return total


def prefix_tokens(text: str, count: int) -> str:
    """The first `count` tokens of `text`, as an exact prefix of it."""
    if count <= 0:
        return ""
    spans = token_spans(text)
    if count >= len(spans):
        return text
    return text[: spans[count - 1][1]]
