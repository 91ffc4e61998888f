"""Turning a model's answer text into a value: JSON (with the usual wrapping tolerated) or a label."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

# ```json ... ``` or ``` ... ```; lazy so two blocks stay two blocks.
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
# Bounds the work on pathological prose full of brackets.
_MAX_SPANS = 16
_CLOSER = {"{": "}", "[": "]"}
_OPENER = re.compile(r"[\[{]")
# what may follow an opening bracket of JSON: a key or "}" after "{", a value or "]" after "["
_JSON_START = re.compile(r'(?<=\{)\s*["}]|(?<=\[)\s*[-"\d\[{\]tfn]')

_QUOTES = "\"'`*“”‘’ \t\r\n"
_TRAILING = ".,;:!? \t\r\n"
_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|label)\s*(?:is\b\s*[:=]?|[:=])\s*", re.IGNORECASE)
# "(B)", "[B]", "B.", "B)", "B: Paris", "(B) Paris" -- but not "A cat" (a letter then prose needs a delimiter).
_LETTER = re.compile(r"[(\[]?([A-Za-z])(?:[)\].:](?:\s.*)?)?", re.DOTALL)


def clip(text: str, limit: int = 60) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis: keeps reasons short."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def extract_json(text: str) -> Any:
    """Parse JSON from a model answer: the whole text, else a fenced block, else the longest {...}/[...] span.

    Raises ValueError("invalid JSON: <message> at char <n>") with the error of the narrowest candidate tried.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        error = e
    for block in _FENCE.findall(text):
        try:
            return orjson.loads(block)
        except orjson.JSONDecodeError as e:
            error = e
    best: tuple[int, Any] | None = None
    for span in _top_level_spans(text):
        try:
            value = orjson.loads(span)
        except orjson.JSONDecodeError as e:
            error = e
            continue
        # Longest wins so "see [1]: {...}" yields the object, not the footnote.
        if best is None or len(span) > best[0]:
            best = (len(span), value)
    if best is not None:
        return best[1]
    raise ValueError(f"invalid JSON: {error.msg} at char {error.pos}")


def _top_level_spans(text: str) -> Iterator[str]:
    """Balanced {...} / [...] spans in order, not descending into a span already yielded."""
    pos = 0
    for _ in range(_MAX_SPANS):
        match = _OPENER.search(text, pos)
        if match is None:
            return
        if not _JSON_START.match(text, match.end()):
            pos = match.end()          # a bracket of prose (":-[", "[sic]"): no JSON value can start here
            continue
        end = _balanced_end(text, match.start())
        if end is None:
            # Unclosed to the end of the text (e.g. truncated): anything inside is a fragment, not the answer.
            return
        yield text[match.start() : end]
        pos = end


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket closing the one at `start`, skipping JSON strings; None if unbalanced."""
    stack: list[str] = []
    in_string = escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in _CLOSER:
            stack.append(_CLOSER[c])
        elif c in "}]":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return i + 1
    return None


def normalize_label(text: str, labels: Sequence[str]) -> str | None:
    """The canonical label `text` names (case-insensitive, wrapping and "Answer:" tolerated), else None."""
    canonical = {label.casefold(): label for label in labels}
    candidate = text
    for _ in range(4):  # each round peels one "Answer:" prefix; nobody nests more than a couple
        candidate = candidate.strip(_QUOTES).rstrip(_TRAILING).strip(_QUOTES)
        hit = canonical.get(candidate.casefold())
        if hit is not None:
            return hit
        stripped = _PREFIX.sub("", candidate, count=1)
        if stripped == candidate:
            break
        candidate = stripped
    if labels and all(len(label) == 1 and label.isalpha() for label in labels):
        match = _LETTER.fullmatch(candidate)
        if match is not None:
            return canonical.get(match.group(1).casefold())
    return None


def parse_output(text: str, output_format: str, labels: Sequence[str] = ()) -> Any:
    """The parsed answer for a format ("text" -> None, "json" -> value, "label" -> label); None if unparsable."""
    if output_format == "json":
        try:
            return extract_json(text)
        except ValueError:
            return None  # the json verifier reports why; the record just has no parsed value
    if output_format == "label":
        return normalize_label(text, labels)
    return None


#: what `lookup_field` returns for an absent field (None is a value a JSON answer can hold)
MISSING = object()


def lookup_field(value: Any, dotted: str) -> Any:
    """value["a"]["b"] for "a.b", or MISSING when any step is absent or not an object."""
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value
