"""Recorded multi-model responses (the ../shared/datasets format): read, index by prompt, turn into answers.

One JSON object per line: id, split, messages (system / user; assistant turns of a few-shot prompt are
kept as a transcript in the user text), gold, and per model a response
with text, input/output tokens, cost, latency, the answer token's logprob, samples and `correct`.
The replay provider and the simulator both serve answers from here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from cascade.errors import ConfigError, Permanent
from cascade.models import Completion, TokenLogprob, Usage

_log = logging.getLogger(__name__)
#: a recorded logprob a little above 0 is float rounding of a certain token; well above it is no log-probability
LOGPROB_ROUNDING = 1e-6


@dataclass(frozen=True)
class RecordedResponse:
    """One model's recorded answer to one prompt."""

    model: str
    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    logprob: float | None = None            # log-probability of the answer token, where recorded
    samples: tuple[str, ...] = ()           # n sampled answers, where recorded
    sample_answers: tuple[str, ...] = ()    # the source's extracted answer of each sample (or of `text`)
    correct: bool | None = None

    def answer_correct(self, text: str, gold: str | None) -> bool | None:
        """Whether `text` (this answer, or one of its samples) is right: by gold where it can tell, else `correct`;
        with no `correct` recorded, by `text`'s final answer against gold (`same_answer`)."""
        candidates = self.samples or (self.text,)
        if gold is not None and text in candidates and len(self.sample_answers) == len(candidates):
            return self.sample_answers[candidates.index(text)].strip() == gold.strip()
        if self.correct is None and gold is not None:
            return same_answer(text, gold)
        return self.correct

    def completion(self, n: int = 1, logprobs: bool = False) -> Completion:
        """The answer as the API returns it for `n` choices (samples served in recorded order).

        Only the answer token's logprob is recorded, so logprobs are one entry spanning the text.
        Usage for n < recorded samples is the prompt plus a share of the recorded output tokens.
        """
        recorded = len(self.samples)
        if n > 1 and n > recorded:
            raise Permanent(f"replay: {self.model} has {recorded} recorded samples, {n} were asked for")
        share = n / recorded if recorded else 1.0
        usage = Usage(self.input_tokens, max(1, round(self.output_tokens * share)) if self.output_tokens else 0)
        tokens = (TokenLogprob(self.text, self.logprob),) if logprobs and self.logprob is not None else ()
        return Completion(text=self.text if n == 1 else self.samples[0], usage=usage, finish_reason="stop",
                          model=self.model, latency_ms=self.latency_ms, logprobs=tokens,
                          samples=self.samples[:n] if n > 1 else ())


@dataclass(frozen=True)
class RecordedRow:
    """One recorded prompt and every model's response to it."""

    id: str
    split: str
    system: str
    user: str
    gold: str | None
    responses: Mapping[str, RecordedResponse] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What a request must send to be answered from this row."""
        return prompt_key((self.system, self.user))


WRAPPING = " \t()[]{}<>.,:;!*#\"'`"     # around a final answer: "(A)", "**42**", "#### 42", "A."


def same_answer(text: str, gold: str) -> bool:
    """Whether an answer's last non-empty line is the gold answer, ignoring case and the marks around it."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and lines[-1].strip(WRAPPING).casefold() == gold.strip(WRAPPING).casefold()


def prompt_key(texts: tuple[str, ...] | list[str]) -> str:
    """The lookup key of a request: its non-empty message texts (system first), in order."""
    return "\x1e".join(t for t in texts if t)


class RecordedSet:
    """Rows of one recorded file, by id and by prompt (the first row wins for a repeated prompt)."""

    def __init__(self, rows: list[RecordedRow], source: str = "<recorded>"):
        self.rows = tuple(rows)
        self.source = source
        self.skipped: tuple[str, ...] = ()      # "FILE: line N: ..." for each line that was not a row
        by_key: dict[str, RecordedRow] = {}
        for row in rows:
            by_key.setdefault(row.key, row)
        self._by_key = MappingProxyType(by_key)
        self._by_id = MappingProxyType({row.id: row for row in reversed(rows)})   # the first row wins

    def find(self, texts: tuple[str, ...] | list[str], row_id: str = "") -> RecordedRow | None:
        """The row recorded for a request with these message texts, else the row with this id, or None."""
        return self._by_key.get(prompt_key(texts)) or (self._by_id.get(row_id) if row_id else None)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model with a recorded response, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row.responses))
        return tuple(seen)


NOT_RECORDED_AFTER = 10    # lines refused before any row is read: the file is something else, said once


def load_recorded(path: str | Path, split: str | None = None,
                  on_bad_row: Callable[[str], None] | None = None) -> RecordedSet:
    """Read a recorded file (only rows of `split` when given).

    A file that cannot be read is a ConfigError. A line that is not a recorded row is skipped and
    reported ("FILE: line N: ...") to `on_bad_row` (default: a logged warning); the set's
    `skipped` lists them. Non-finite numbers as Python's json writes them (-Infinity, NaN) are read.
    A row keeps its place when one answer is unusable: a null text reads as no answer and a logprob
    above 0 as unknown (reported the same way, not skipped), as a live call would return them.
    A file whose first NOT_RECORDED_AFTER lines are all refused is something else: a ConfigError says so
    (a TOML or CSV file given by mistake gave one warning per line).
    """
    report = on_bad_row or _log.warning
    skipped: list[str] = []

    def bad(message: str) -> None:
        skipped.append(message)
        report(message)

    rows = [row for row in _rows(Path(path), bad, report) if split is None or row.split == split]
    out = RecordedSet(rows, str(path))
    out.skipped = tuple(skipped)
    return out


def is_recorded(path: str | Path) -> bool:
    """Whether a JSONL file holds recorded rows: its first non-empty line is an object with `messages` and
    `responses` (False for anything else, unreadable files included: the caller's own reader reports those)."""
    try:
        with Path(path).open("rb") as stream:
            line = next((raw for raw in stream if raw.strip()), b"")
        data = _parse(line) if line else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "messages" in data and "responses" in data


def _rows(path: Path, bad: Callable[[str], None], note: Callable[[str], None]) -> Iterator[RecordedRow]:
    try:
        stream = path.open("rb")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read recorded responses: {e.strerror or e}") from None
    read = refused = 0
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                data = _parse(line)
            except ValueError as e:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
                why = f"not JSON ({e})"
            else:
                try:
                    row = _row(data, lambda message, n=number: note(f"{path}: line {n}: {message}"))
                except (ValueError, TypeError) as e:     # a RowError, or a count or cost that is not a number
                    why = str(e)
                else:
                    read += 1
                    yield row
                    continue
            bad(f"{path}: line {number}: skipped, not a recorded row: {why}")
            refused += 1
            if not read and refused >= NOT_RECORDED_AFTER:
                raise ConfigError(f"{path}: not a recorded file: its first {refused} lines are not recorded rows")


def _parse(line: bytes) -> Any:
    """One JSON line; the standard library reads what orjson refuses: -Infinity, Infinity and NaN."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


class RowError(ValueError):
    """A line that is JSON but not a recorded row: what is wrong, in the format's own words."""


def _kind(value: Any) -> str:
    """A JSON value's kind, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def _logprob(model: str, value: Any, note: Callable[[str], None]) -> float | None:
    """A recorded logprob: -inf stays (probability 0), NaN and null are unknown, and so is one above 0 (no
    log-probability: said through `note`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"responses.{model}.logprob must be a number or null, got {_kind(value)}")
    number = float(value)
    if math.isnan(number):
        return None
    if number > LOGPROB_ROUNDING:
        note(f"responses.{model}.logprob {number:g} is above 0, no log-probability: read as unknown")
        return None
    return min(number, 0.0)


def _row(data: Any, note: Callable[[str], None]) -> RecordedRow:
    if not isinstance(data, dict):
        raise RowError(f"expected a JSON object, got {_kind(data)}")
    missing = [key for key in ("id", "messages", "responses") if key not in data]
    if missing:
        raise RowError(f"missing field {', '.join(repr(k) for k in missing)}")
    messages = data["messages"]
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RowError("messages must be a list of {\"role\", \"content\"} objects with string content")
    roles = {m["role"] for m in messages}
    if not roles <= {"system", "user", "assistant"} or "user" not in roles:
        raise RowError("messages must be system, user and assistant messages, with a user message")
    if not isinstance(data["responses"], dict) or not all(isinstance(r, dict) for r in data["responses"].values()):
        raise RowError("responses must be an object of model name -> response object")
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if "assistant" in roles:    # a few-shot conversation: the pipeline's {user} is its transcript
        user = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)
    else:
        user = [m["content"] for m in turns][-1]
    responses = {model: _response(model, r, note) for model, r in data["responses"].items()}
    gold = data.get("gold")
    return RecordedRow(str(data["id"]), str(data.get("split", "")), system, user,
                       None if gold is None else str(gold), MappingProxyType(responses))


def _response(model: str, r: dict[str, Any], note: Callable[[str], None]) -> RecordedResponse:
    text = r.get("text")
    if text is None:
        note(f"responses.{model}.text is null: read as no answer")
        text = ""
    if not isinstance(text, str):
        raise RowError(f"responses.{model}.text must be a string, got {_kind(text)}")
    if r.get("correct") is not None and not isinstance(r["correct"], bool):
        raise RowError(f"responses.{model}.correct must be true, false or null, got {_kind(r['correct'])}")
    return RecordedResponse(
        model=model, text=text, input_tokens=int(r.get("input_tokens", 0)),
        output_tokens=int(r.get("output_tokens", 0)), cost_usd=float(r.get("cost_usd", 0.0)),
        latency_ms=float(r.get("latency_ms") or 0.0),
        logprob=_logprob(model, r.get("logprob"), note),
        samples=tuple(str(s) for s in r.get("samples", ())),
        sample_answers=tuple(str(s) for s in r.get("sample_answers", ())),
        correct=None if r.get("correct") is None else bool(r["correct"]),
    )
