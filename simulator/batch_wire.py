"""The Batch APIs' wire formats: OpenAI's Files + Batches (/v1/files, /v1/batches) and Anthropic's
Message Batches (/v1/messages/batches): reading what the SDKs send, shaping what they parse."""

from __future__ import annotations

import email.parser
import email.policy
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from cascade.simulator.wire import ApiError, BadRequest

if TYPE_CHECKING:
    from cascade.simulator.batches import Batch, BatchLine, StoredFile

#: the one endpoint a simulated OpenAI batch runs (the simulator answers chat completions only)
OPENAI_ENDPOINT = "/v1/chat/completions"
#: OpenAI's limits on a batch's input file
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
#: Anthropic's limits on one Message Batch
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: a batch's completion window, as both APIs report `expires_at`
WINDOW_S = 24 * 3600
_EXPIRED_LINE = {"code": "batch_expired",
                 "message": "This request could not be executed before the completion window expired."}


def form_fields(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, or None for a plain field; bytes)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise BadRequest("expected a multipart/form-data body (purpose, file)")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise BadRequest("the multipart/form-data body has no parts")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


# --- OpenAI ---------------------------------------------------------------------------------------


def openai_file(stored: StoredFile) -> dict[str, Any]:
    """A File object."""
    return {"id": stored.id, "object": "file", "bytes": len(stored.data), "created_at": stored.created_at,
            "filename": stored.filename, "purpose": stored.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body is not a JSON object")
    return body


def openai_create_options(raw: bytes) -> dict[str, Any]:
    """The fields of a batches.create body that the Batch object echoes, validated."""
    body = json_object(raw)
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise BadRequest("input_file_id: a file id is required")
    if body.get("endpoint") != OPENAI_ENDPOINT:
        raise BadRequest(f"endpoint: the simulator runs {OPENAI_ENDPOINT} batches only, not {body.get('endpoint')!r}")
    if body.get("completion_window") != "24h":
        raise BadRequest("completion_window: must be '24h'")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise BadRequest("metadata: must be an object of string values")
    return {"input_file_id": file_id, "endpoint": OPENAI_ENDPOINT, "completion_window": "24h", "metadata": metadata}


def _line_error(number: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": number, "message": f"Line {number}: {message}", "param": param}


def openai_lines(data: bytes) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """An input file's (custom_id, body) requests and its bad lines' errors (any error fails the batch).

    A file above OPENAI_MAX_BYTES or OPENAI_MAX_REQUESTS requests, or a custom_id used twice, is a BadRequest.
    """
    if len(data) > OPENAI_MAX_BYTES:
        raise BadRequest(f"input_file_id: the file has {len(data)} bytes; a batch's input file takes at most "
                         f"{OPENAI_MAX_BYTES // 2**20} MB.")
    requests: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            errors.append(_line_error(number, "invalid_json_line", "This line is not parseable as valid JSON."))
            continue
        if not isinstance(line, dict):
            errors.append(_line_error(number, "invalid_json_line", "This line is not a JSON object."))
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_line_error(number, "missing_required_parameter", "custom_id: a string is required.",
                                      "custom_id"))
        elif line.get("method") != "POST":
            errors.append(_line_error(number, "invalid_method", "method: must be 'POST'.", "method"))
        elif line.get("url") != OPENAI_ENDPOINT:
            errors.append(_line_error(number, "invalid_url", f"url: must be the batch's endpoint {OPENAI_ENDPOINT}.",
                                      "url"))
        elif not isinstance(line.get("body"), dict):
            errors.append(_line_error(number, "invalid_request", "body: a JSON object is required.", "body"))
        elif custom_id in first_line:
            raise BadRequest(f"Duplicate custom_id {custom_id!r} on lines {first_line[custom_id]} and {number}: "
                             "each custom_id must be unique within a batch.")
        else:
            first_line[custom_id] = number
            requests.append((custom_id, line["body"]))
    if len(requests) + len(errors) > OPENAI_MAX_REQUESTS:
        raise BadRequest(f"The input file has {len(requests) + len(errors)} requests; "
                         f"a batch takes at most {OPENAI_MAX_REQUESTS}.")
    if not requests and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "The input file has no requests.", "param": None})
    return requests, errors


def _openai_usage(lines: list[BatchLine]) -> dict[str, Any]:
    usages = [line.document["usage"] for line in lines if line.state == "succeeded" and line.document]
    prompt = sum(u["prompt_tokens"] for u in usages)
    output = sum(u["completion_tokens"] for u in usages)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output}


def _seconds(moment: float | None) -> int | None:
    return None if moment is None else int(moment)


def openai_batch(batch: Batch) -> dict[str, Any]:
    """A Batch object; unfinished lines count in neither `completed` nor `failed`."""
    status = batch.status
    created, ended = int(batch.created_at), _seconds(batch.ended_at)
    done = status in ("completed", "expired")
    return {
        "id": batch.id, "object": "batch", **batch.options,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "status": status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": created,
        "in_progress_at": None if status == "failed" else created,
        "expires_at": created + WINDOW_S,
        "finalizing_at": ended if done else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": _seconds(batch.cancel_at),
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {"total": len(batch.lines), "completed": batch.count("succeeded"),
                           "failed": len(batch.lines) - batch.count("succeeded") - batch.count("processing")},
        "usage": _openai_usage(batch.lines) if done else None,
    }


def openai_result_lines(batch: Batch) -> tuple[bytes, bytes]:
    """An ended batch's output file (200 answers) and error file (other answers, expired lines), as JSONL."""
    output, errors = [], []
    for line in batch.lines:
        if line.state in ("succeeded", "errored"):
            response = {"status_code": line.status, "request_id": line.request_id, "body": line.document}
            record = {"id": line.id, "custom_id": line.custom_id, "response": response, "error": None}
            (output if line.state == "succeeded" else errors).append(orjson.dumps(record) + b"\n")
        elif line.state == "expired":
            errors.append(orjson.dumps({"id": line.id, "custom_id": line.custom_id, "response": None,
                                        "error": _EXPIRED_LINE}) + b"\n")
    return b"".join(output), b"".join(errors)


def openai_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page ("after" = last_id fetches the next)."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


# --- Anthropic ------------------------------------------------------------------------------------


def anthropic_requests(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (custom_id, params) requests of a batches.create body; `params` are validated when answered."""
    if len(raw) > ANTHROPIC_MAX_BYTES:
        raise ApiError("too_large", f"Request exceeds the {ANTHROPIC_MAX_BYTES // 2**20} MB limit of a batch.")
    body = json_object(raw)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise BadRequest("requests: a non-empty array of {custom_id, params} is required")
    if len(requests) > ANTHROPIC_MAX_REQUESTS:
        raise BadRequest(f"requests: {len(requests)} requests; a batch takes at most {ANTHROPIC_MAX_REQUESTS}")
    seen: dict[str, int] = {}
    parsed = []
    for index, request in enumerate(requests):
        if not isinstance(request, dict) or not isinstance(request.get("params"), dict):
            raise BadRequest(f"requests.{index}: an object with custom_id and params is required")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            raise BadRequest(f"requests.{index}.custom_id: {custom_id!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$")
        if custom_id in seen:
            raise BadRequest(f"requests.{index}.custom_id: {custom_id!r} is used twice (requests.{seen[custom_id]} "
                             "too); each custom_id must be unique within a batch")
        seen[custom_id] = index
        parsed.append((custom_id, request["params"]))
    return parsed


def _rfc3339(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def anthropic_batch(batch: Batch, results_url: str) -> dict[str, Any]:
    """A MessageBatch; `results_url` is shown once it has ended."""
    status = batch.status
    processing = "in_progress" if status == "in_progress" else "canceling" if status == "cancelling" else "ended"
    counts = {state: batch.count(state) for state in ("processing", "succeeded", "errored", "canceled", "expired")}
    return {
        "id": batch.id, "type": "message_batch", "processing_status": processing, "request_counts": counts,
        "ended_at": _rfc3339(batch.ended_at), "created_at": _rfc3339(batch.created_at),
        "expires_at": _rfc3339(batch.created_at + WINDOW_S), "archived_at": None,
        "cancel_initiated_at": _rfc3339(batch.cancel_at),
        "results_url": results_url if processing == "ended" else None,
    }


def anthropic_results(batch: Batch) -> bytes:
    """An ended batch's results, one JSON line per request in input order."""
    lines = []
    for line in batch.lines:
        if line.state == "succeeded":
            result: dict[str, Any] = {"type": "succeeded", "message": line.document}
        elif line.state == "errored":
            result = {"type": "errored", "error": line.document}
        else:
            result = {"type": line.state}
        lines.append(orjson.dumps({"custom_id": line.custom_id, "result": result}) + b"\n")
    return b"".join(lines)


def anthropic_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page ("after_id" = last_id fetches the next)."""
    return {"data": items, "has_more": has_more, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None}
