"""Stream JSONL or CSV rows without loading the file; validate each into a Job or an InputError."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from cascade.errors import InputError
from cascade.models import Job

MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row: its line number, and either the decoded object or why it could not be decoded."""

    line: int
    value: dict[str, Any] | None
    error: str = ""


def read_rows(stream: BinaryIO, fmt: str, max_row_bytes: int) -> Iterator[RawRow]:
    """Rows of a JSONL or CSV stream, one at a time, blank lines skipped."""
    if fmt == "csv":
        yield from _csv_rows(stream, max_row_bytes)
    else:
        yield from _jsonl_rows(stream, max_row_bytes)


def _jsonl_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[RawRow]:
    for line, raw in enumerate(stream, start=1):
        if len(raw) > max_row_bytes:
            yield RawRow(line, None, f"row is {len(raw)} bytes, over the limit of {max_row_bytes}")
            continue
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            yield RawRow(line, None, f"invalid JSON: {e}")
            continue
        if not isinstance(value, dict):
            yield RawRow(line, None, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield RawRow(line, value)


def _csv_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[RawRow]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    for row in reader:
        line = reader.line_num
        if None in row:
            yield RawRow(line, None, f"{len(row[None])} more value(s) than header columns")
            continue
        missing = [k for k, v in row.items() if v is None]
        size = sum(len(v) for v in row.values() if v)
        if size > max_row_bytes:
            yield RawRow(line, None, f"row is {size} bytes, over the limit of {max_row_bytes}")
        elif missing:
            yield RawRow(line, None, f"missing value(s) for column(s): {', '.join(missing)}")
        else:
            yield RawRow(line, dict(row))


def to_job(row: RawRow, required_fields: Sequence[str]) -> Job:
    """The Job of a decoded row, or InputError naming the line and the problem."""
    if row.value is None:
        raise InputError(row.line, row.error)
    value = row.value
    if "id" not in value or value["id"] in (None, ""):
        raise InputError(row.line, "missing 'id'")
    job_id = value["id"]
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
        raise InputError(row.line, f"'id' must be a string or an integer, got {type(job_id).__name__}")
    job_id = str(job_id)
    if len(job_id) > MAX_ID_LENGTH:
        raise InputError(row.line, f"'id' is longer than {MAX_ID_LENGTH} characters")
    missing = [f for f in required_fields if f not in value or value[f] is None]
    if missing:
        names = ", ".join(f"'{f}'" for f in missing)
        raise InputError(row.line, f"missing field {names} used by the prompt")
    fields = {k: v for k, v in value.items() if k != "id"}
    return Job(job_id, fields, row.line)
