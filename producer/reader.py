"""Stream JSONL or CSV rows without loading the file; validate each into a Job or an InputError.

Text is decoded line by line in the given encoding (UTF-8 by default; a byte-order mark is skipped), so
a line that is not valid in it is one rejected row that names its line, never a traceback.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from cascade.errors import InputError
from cascade.models import Job

MAX_ID_LENGTH = 256
JSON_KINDS = {type(None): "null", bool: "true or false", list: "a list", str: "a string"}   # else a number
BOM = codecs.BOM_UTF8


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row: its line number, the decoded object or why it could not be decoded, and its raw text."""

    line: int
    value: dict[str, Any] | None
    error: str = ""
    raw: str = ""           # the row as read (what a rejected-rows file gives back to be fixed)
    note: str = ""          # said after any reason the row is rejected for (a CSV record over several lines)


def check_encoding(encoding: str) -> str:
    """The codec name, or LookupError naming the unknown one."""
    return codecs.lookup(encoding).name


def read_rows(stream: BinaryIO, fmt: str, max_row_bytes: int, encoding: str = "utf-8") -> Iterator[RawRow]:
    """Rows of a JSONL or CSV stream, one at a time, blank lines skipped."""
    lines = _decoded_lines(stream, encoding)
    if fmt == "csv":
        yield from _csv_rows(lines, max_row_bytes)
    else:
        yield from _jsonl_rows(lines, max_row_bytes)


def _decoded_lines(stream: BinaryIO, encoding: str) -> Iterator[tuple[int, bytes, str | None, str]]:
    """(line number, raw bytes, decoded text or None, why not) for each line."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            yield number, raw, raw.decode(encoding), ""
        except UnicodeDecodeError as e:
            yield number, raw, None, (f"not valid {encoding} (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                      "give --encoding when the file uses another one")


def _jsonl_rows(lines: Iterator[tuple[int, bytes, str | None, str]], max_row_bytes: int) -> Iterator[RawRow]:
    for line, raw, text, problem in lines:
        shown = text.rstrip("\r\n") if text is not None else raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(raw) > max_row_bytes:
            yield RawRow(line, None, f"row is {len(raw)} bytes, over the limit of {max_row_bytes}", shown[:1000])
            continue
        if text is None:
            yield RawRow(line, None, problem, shown)
            continue
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            yield RawRow(line, None, f"invalid JSON: {e}", shown)
            continue
        if not isinstance(value, dict):
            yield RawRow(line, None, f"expected a JSON object, got {JSON_KINDS.get(type(value), 'a number')}", shown)
            continue
        yield RawRow(line, value, raw=shown)


def _csv_rows(lines: Iterator[tuple[int, bytes, str | None, str]], max_row_bytes: int) -> Iterator[RawRow]:
    bad: list[RawRow] = []
    read: list[tuple[int, bool]] = []      # the file's line number and blankness of each line the reader took

    def texts() -> Iterator[str]:
        for line, raw, text, problem in lines:
            if text is None:
                bad.append(RawRow(line, None, problem, raw.decode("utf-8", "replace").rstrip("\r\n")))
                continue
            read.append((line, not text.strip()))
            yield text

    reader = csv.DictReader(texts())
    _ = reader.fieldnames       # the header: the lines of each record are then the ones read since the last
    read.clear()
    for row in reader:
        yield from _drain(bad)
        taken = [line for line, blank in read if not blank] or [line for line, _ in read]
        read.clear()
        line, note = taken[0], "" if len(taken) == 1 else (
            f" (a quoted value runs from line {taken[0]} to line {taken[-1]}: is a quote left open?)")
        shown = orjson.dumps({k: v for k, v in row.items() if k is not None}).decode()
        if None in row:
            yield RawRow(line, None, f"{len(row[None])} more value(s) than header columns", shown, note)
            continue
        missing = [k for k, v in row.items() if v is None]
        size = sum(len(v) for v in row.values() if v)
        if size > max_row_bytes:
            yield RawRow(line, None, f"row is {size} bytes, over the limit of {max_row_bytes}", shown[:1000], note)
        elif missing:
            yield RawRow(line, None, f"missing value(s) for column(s): {', '.join(missing)}", shown, note)
        else:
            yield RawRow(line, dict(row), raw=shown, note=note)
    yield from _drain(bad)


def _drain(bad: list[RawRow]) -> Iterator[RawRow]:
    while bad:
        yield bad.pop(0)


def to_job(row: RawRow, required_fields: Sequence[str]) -> Job:
    """The Job of a decoded row, or InputError naming the line and the problem."""

    def rejected(problem: str) -> InputError:
        return InputError(row.line, problem + row.note, row.raw)

    if row.value is None:
        raise rejected(row.error)
    value = row.value
    if "id" not in value or value["id"] in (None, ""):
        raise rejected("missing 'id'")
    job_id = value["id"]
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
        raise rejected(f"'id' must be a string or an integer, got {type(job_id).__name__}")
    job_id = str(job_id)
    if len(job_id) > MAX_ID_LENGTH:
        raise rejected(f"'id' is longer than {MAX_ID_LENGTH} characters")
    missing = [f for f in required_fields if f not in value or value[f] is None]
    if missing:
        names = ", ".join(f"'{f}'" for f in missing)
        raise rejected(f"missing field {names} used by the prompt")
    fields = {k: v for k, v in value.items() if k != "id"}
    return Job(job_id, fields, row.line)
