"""The simulator's Batch APIs (OpenAI Files + Batches, Anthropic Message Batches), driven through the official
SDKs over HTTP: a batch line gets exactly the answer a live call with the same body gets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion

from cascade.errors import ConfigError
from cascade.simulator import SimServer, load_scenario, parse_scenario
from cascade.simulator.schema import BatchProfile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scenario.toml"
DATASETS = ROOT.parent / "shared" / "datasets"
DELAY_S = 0.3
SYSTEM = "You triage support tickets. Answer with JSON."
OPENAI_MODEL = "gpt-4o-mini"          # the example's cheap tier: a mix of outcomes
CLAUDE_MODEL = "claude-haiku-4-5"     # the example's mid tier


def tickets(count: int) -> list[str]:
    rows = [orjson.loads(line) for line in (ROOT / "examples" / "tickets.jsonl").read_bytes().splitlines()[:count]]
    return [f"Subject: {row['subject']}\n\n{row['body']}" for row in rows]


def openai_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": OPENAI_MODEL, "max_tokens": 64,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], **extra}


def claude_params(text: str) -> dict[str, Any]:
    return {"model": CLAUDE_MODEL, "max_tokens": 64, "system": SYSTEM, "messages": [{"role": "user", "content": text}]}


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


def batch_file(bodies: dict[str, dict[str, Any]]) -> bytes:
    return jsonl([{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
                  for cid, body in bodies.items()])


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 5.0) -> Any:
    """Poll `read` until `done` holds for what it returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[SimServer]:
    scenario = parse_scenario(EXAMPLE.read_text(encoding="utf-8") + f"\n[batch]\ndelay_s = {DELAY_S}\n", str(EXAMPLE))
    with SimServer(scenario) as sim:
        yield sim


@pytest.fixture
def oai(server: SimServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sim", max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def claude(server: SimServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.url, api_key="sim", max_retries=0, timeout=10)
    yield client
    client.close()


def control(server: SimServer, **body: Any) -> dict[str, Any]:
    response = httpx2.post(server.url + "/control", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def submit_openai(oai: openai.OpenAI, bodies: dict[str, dict[str, Any]]):
    uploaded = oai.files.create(file=("requests.jsonl", batch_file(bodies)), purpose="batch")
    return oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def finish_openai(oai: openai.OpenAI, batch_id: str):
    return wait_for(lambda: oai.batches.retrieve(batch_id), lambda b: b.status not in ("in_progress", "cancelling"))


def read_lines(oai: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    return {line["custom_id"]: line for line in map(orjson.loads, oai.files.content(file_id).text.splitlines())}


def finish_claude(claude: anthropic.Anthropic, batch_id: str):
    return wait_for(lambda: claude.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended")


# --- answers equal live calls -----------------------------------------------------------------


def test_openai_batch_output_equals_live_chat_completions(server, oai):
    # Given: three requests (logprobs, two samples) uploaded as a batch input file
    bodies = {f"ticket-{i}": openai_body(text, logprobs=True, n=2) for i, text in enumerate(tickets(3))}
    uploaded = oai.files.create(file=("requests.jsonl", batch_file(bodies)), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.filename, uploaded.status) == (
        "file", "batch", "requests.jsonl", "processed")
    assert uploaded.bytes == len(batch_file(bodies)) and oai.files.retrieve(uploaded.id) == uploaded
    assert oai.files.content(uploaded.id).content == batch_file(bodies)

    # When: the batch is created, then read again after its delay
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"run": "test"})
    assert batch.status == "in_progress" and batch.output_file_id is None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.metadata) == (3, 0, {"run": "test"})
    ended = finish_openai(oai, batch.id)

    # Then: completed, every line answered 200 with the body a live call returns
    assert ended.status == "completed" and ended.completed_at >= ended.created_at
    assert (ended.request_counts.completed, ended.request_counts.failed, ended.error_file_id) == (3, 0, None)
    assert oai.files.retrieve(ended.output_file_id).purpose == "batch_output"
    output = read_lines(oai, ended.output_file_id)
    assert set(output) == set(bodies)
    for custom_id, body in bodies.items():
        line = output[custom_id]
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        batched = ChatCompletion.model_validate(line["response"]["body"])
        live = oai.chat.completions.create(**body)
        assert [c.message.content for c in batched.choices] == [c.message.content for c in live.choices]
        assert [c.logprobs for c in batched.choices] == [c.logprobs for c in live.choices]
        assert [c.finish_reason for c in batched.choices] == [c.finish_reason for c in live.choices]
        assert batched.usage == live.usage
    assert ended.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"]
                                           for line in output.values())
    stats = server.stats()
    assert stats["batches"] == {"created": 1, "requests": 3, "errored_lines": 0, "expired_lines": 0,
                                "canceled_lines": 0, "duplicate_submissions": 0}
    assert (stats["apis"]["openai_batch"], stats["apis"]["openai"]) == (3, 3)
    model = stats["models"][OPENAI_MODEL]
    assert (model["requests"], model["batch_requests"], model["ok"], sum(model["answers"].values())) == (6, 3, 6, 12)


def test_anthropic_batch_results_equal_live_messages(server, claude):
    texts = tickets(3)
    batch = claude.messages.batches.create(
        requests=[{"custom_id": f"ticket-{i}", "params": claude_params(text)} for i, text in enumerate(texts)])
    assert batch.type == "message_batch" and batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3 and batch.results_url is None and batch.ended_at is None

    ended = finish_claude(claude, batch.id)
    assert ended.request_counts.succeeded == 3 and ended.request_counts.processing == 0
    assert ended.results_url == f"{server.url}/v1/messages/batches/{batch.id}/results"
    results = {result.custom_id: result.result for result in claude.messages.batches.results(batch.id)}
    assert sorted(results) == ["ticket-0", "ticket-1", "ticket-2"]
    for i, text in enumerate(texts):
        result = results[f"ticket-{i}"]
        live = claude.messages.create(**claude_params(text))
        assert result.type == "succeeded"
        assert result.message.content == live.content and result.message.usage == live.usage
        assert result.message.stop_reason == live.stop_reason
    assert server.stats()["apis"]["anthropic_batch"] == 3


@pytest.mark.skipif(not (DATASETS / "date-mot.jsonl").exists(), reason=f"{DATASETS} is not here")
def test_recorded_answers_are_served_to_batch_lines_with_logprobs_and_samples(tmp_path):
    # Given: a scenario serving two recorded datasets: answer-token logprobs (mmlu), 20 samples (date-mot)
    rows = [orjson.loads(line) for name in ("mmlu-oai-test.jsonl", "date-mot.jsonl")
            for line in (DATASETS / name).read_bytes().splitlines()[:2]]
    (tmp_path / "slice.jsonl").write_bytes(jsonl(rows))
    (tmp_path / "scenario.toml").write_text(f'recorded = "slice.jsonl"\n[batch]\ndelay_s = {DELAY_S}\n')
    bodies = {
        row["id"]: {"model": model, "messages": row["messages"], **extra}
        for row, (model, extra) in zip(rows, [("gpt-4o-mini", {"logprobs": True})] * 2
                                       + [("gpt-3.5-turbo", {"n": 5})] * 2, strict=True)
    }
    with SimServer(load_scenario(tmp_path / "scenario.toml")) as sim:
        oai = openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0, timeout=10)
        # When: they run as a batch
        ended = finish_openai(oai, submit_openai(oai, bodies).id)
        output = read_lines(oai, ended.output_file_id)
        # Then: each line's body is the live answer, recorded text, usage, logprobs and samples alike
        for custom_id, body in bodies.items():
            batched = ChatCompletion.model_validate(output[custom_id]["response"]["body"])
            live = oai.chat.completions.create(**body)
            assert batched.choices == live.choices and batched.usage == live.usage
        assert len(output["date-0000"]["response"]["body"]["choices"]) == 5
        assert output["mmlu-test-00000"]["response"]["body"]["choices"][0]["logprobs"]["content"]


# --- errored lines, resubmission and duplicates ---------------------------------------------------


def test_error_rate_fails_some_lines_and_a_resubmission_of_only_those_is_no_duplicate(server, oai, claude):
    # Given: half of all lines answered with a server error
    assert control(server, batch_error_rate=0.5)["batch_error_rate"] == 0.5
    bodies = {f"t{i}": openai_body(text) for i, text in enumerate(tickets(10))}

    # When: a batch runs
    first = finish_openai(oai, submit_openai(oai, bodies).id)

    # Then: some lines are in the error file with their 500, the others in the output file
    output, errors = read_lines(oai, first.output_file_id), read_lines(oai, first.error_file_id)
    assert 0 < len(errors) < 10 and set(output) | set(errors) == set(bodies) and not set(output) & set(errors)
    assert (first.status, first.request_counts.completed, first.request_counts.failed) == (
        "completed", len(output), len(errors))
    for line in errors.values():
        assert line["response"]["status_code"] == 500 and line["error"] is None
        assert line["response"]["body"]["error"]["type"] == "server_error"
    assert server.stats()["batches"]["errored_lines"] == len(errors)

    # When: only the errored lines are resubmitted under the same custom_ids, nothing is a duplicate
    control(server, batch_error_rate=0.0)
    second = finish_openai(oai, submit_openai(oai, {cid: bodies[cid] for cid in errors}).id)
    assert second.request_counts.completed == len(errors)
    assert server.stats()["batches"]["duplicate_submissions"] == 0

    # When: a line that had succeeded is submitted again, it is one duplicate
    succeeded = min(output)
    finish_openai(oai, submit_openai(oai, {succeeded: bodies[succeeded]}).id)
    stats = httpx2.get(server.url + "/stats", params={"submissions": 1}).json()["batches"]
    assert stats["duplicate_submissions"] == 1
    assert stats["submissions"][f"{OPENAI_MODEL}|{succeeded}"] == 2
    assert stats["submissions"][f"{OPENAI_MODEL}|{min(errors)}"] == 2
    assert "submissions" not in server.stats()["batches"]

    # And: Anthropic's errored lines come back as errored results with an api_error
    control(server, batch_error_rate=0.5)
    batch = claude.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": claude_params(text)} for i, text in enumerate(tickets(10))])
    ended = finish_claude(claude, batch.id)
    results = list(claude.messages.batches.results(batch.id))
    errored = [r for r in results if r.result.type == "errored"]
    assert 0 < len(errored) < 10 and ended.request_counts.errored == len(errored)
    assert {r.result.error.error.type for r in errored} == {"api_error"}


def test_a_request_the_api_refuses_is_an_errored_line(server, oai, claude):
    bad = {"model": OPENAI_MODEL, "messages": []}
    ended = finish_openai(oai, submit_openai(oai, {"ok": openai_body("hello"), "bad": bad}).id)
    errors = read_lines(oai, ended.error_file_id)
    assert list(errors) == ["bad"] and errors["bad"]["response"]["status_code"] == 400
    assert "messages" in errors["bad"]["response"]["body"]["error"]["message"]
    assert list(read_lines(oai, ended.output_file_id)) == ["ok"]

    no_max_tokens = {"model": CLAUDE_MODEL, "messages": [{"role": "user", "content": "x"}]}
    batch = claude.messages.batches.create(requests=[{"custom_id": "bad", "params": no_max_tokens}])
    finish_claude(claude, batch.id)
    (result,) = claude.messages.batches.results(batch.id)
    assert result.result.type == "errored" and result.result.error.error.type == "invalid_request_error"
    assert "max_tokens" in result.result.error.error.message


# --- expiry and cancellation -----------------------------------------------------------------------


def test_expire_next_expires_the_next_batches_half_answered(server, oai, claude):
    assert control(server, batch_expire_next=2)["batch_expire_next"] == 2
    bodies = {f"t{i}": openai_body(text) for i, text in enumerate(tickets(4))}

    expired = finish_openai(oai, submit_openai(oai, bodies).id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (2, 2)
    assert list(read_lines(oai, expired.output_file_id)) == ["t0", "t1"]       # the first half, in file order
    errors = read_lines(oai, expired.error_file_id)
    assert list(errors) == ["t2", "t3"]
    assert errors["t2"]["response"] is None and errors["t2"]["error"] == {
        "code": "batch_expired", "message": "This request could not be executed before the completion window expired."}

    batch = claude.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": claude_params(text)} for i, text in enumerate(tickets(4))])
    ended = finish_claude(claude, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    assert [r.result.type for r in claude.messages.batches.results(batch.id)] == [
        "succeeded", "succeeded", "expired", "expired"]

    assert control(server)["batch_expire_next"] == 0
    assert finish_openai(oai, submit_openai(oai, bodies).id).status == "completed"
    assert server.stats()["batches"]["expired_lines"] == 4


def test_cancel_in_progress_cancels_every_line_and_an_ended_batch_cannot_be_cancelled(server, oai, claude):
    bodies = {f"t{i}": openai_body(text) for i, text in enumerate(tickets(3))}
    batch = submit_openai(oai, bodies)
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = finish_openai(oai, batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 3)
    assert (cancelled.output_file_id, cancelled.error_file_id) == (None, None)
    with pytest.raises(openai.BadRequestError, match="already ended"):
        oai.batches.cancel(batch.id)
    completed = finish_openai(oai, submit_openai(oai, bodies).id)
    with pytest.raises(openai.BadRequestError, match="already ended"):
        oai.batches.cancel(completed.id)

    message_batch = claude.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": claude_params(text)} for i, text in enumerate(tickets(3))])
    canceling = claude.messages.batches.cancel(message_batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    ended = finish_claude(claude, message_batch.id)
    assert (ended.request_counts.canceled, ended.request_counts.succeeded) == (3, 0)
    assert [r.result.type for r in claude.messages.batches.results(message_batch.id)] == ["canceled"] * 3
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        claude.messages.batches.cancel(message_batch.id)
    assert server.stats()["batches"]["canceled_lines"] == 6
    # a canceled line may be resubmitted: not a duplicate
    finish_openai(oai, submit_openai(oai, bodies).id)
    assert server.stats()["batches"]["duplicate_submissions"] == 3    # the completed batch's lines, sent again


# --- lists, deletes, validation, auth ---------------------------------------------------------------


def test_lists_page_newest_first_through_the_sdks_auto_pagination(server, oai, claude):
    created = [submit_openai(oai, {"a": openai_body("hello")}).id for _ in range(3)]
    page = oai.batches.list(limit=1)
    assert [b.id for b in page.data] == [created[-1]] and page.has_more
    assert [b.id for b in oai.batches.list(limit=1)] == created[::-1]      # iterating fetches every page
    assert [b.id for b in oai.batches.list(limit=2, after=created[2])] == created[1::-1]

    message_batches = [claude.messages.batches.create(
        requests=[{"custom_id": "a", "params": claude_params("hello")}]).id for _ in range(3)]
    page = claude.messages.batches.list(limit=1)
    assert [b.id for b in page.data] == [message_batches[-1]] and page.has_more and page.last_id == page.data[0].id
    assert [b.id for b in claude.messages.batches.list(limit=1)] == message_batches[::-1]
    files = [f.id for f in oai.files.list(purpose="batch", limit=1)]
    assert len(files) == 3 and files == sorted(files, reverse=True)


def test_deletes(server, oai, claude):
    uploaded = oai.files.create(file=("r.jsonl", batch_file({"a": openai_body("hi")})), purpose="batch")
    assert oai.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        oai.files.retrieve(uploaded.id)
    batch = claude.messages.batches.create(requests=[{"custom_id": "a", "params": claude_params("hello")}])
    with pytest.raises(anthropic.BadRequestError, match="still in_progress"):
        claude.messages.batches.delete(batch.id)
    finish_claude(claude, batch.id)
    assert claude.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)


def test_anthropic_refuses_a_bad_or_repeated_custom_id(claude):
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.custom_id: 'not ok!' does not match") as bad:
        claude.messages.batches.create(requests=[{"custom_id": "fine", "params": claude_params("a")},
                                                 {"custom_id": "not ok!", "params": claude_params("b")}])
    assert bad.value.status_code == 400 and bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError, match="'twice' is used twice"):
        claude.messages.batches.create(requests=[{"custom_id": "twice", "params": claude_params("a")},
                                                 {"custom_id": "twice", "params": claude_params("b")}])
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        claude.messages.batches.create(requests=[{"custom_id": "x" * 65, "params": claude_params("a")}])


def test_openai_fails_a_batch_whose_file_has_a_line_that_is_not_json(server, oai):
    good = batch_file({"a": openai_body("hi")})
    uploaded = oai.files.create(file=("r.jsonl", good + b"{not json\n" + good.replace(b'"a"', b'"b"')),
                                purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    (error,) = batch.errors.data
    assert (error.code, error.line) == ("invalid_json_line", 2) and error.message.startswith("Line 2:")
    assert oai.batches.retrieve(batch.id).status == "failed"
    assert server.stats()["batches"]["requests"] == 0

    twice = oai.files.create(file=("r.jsonl", good + good), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="Duplicate custom_id 'a' on lines 1 and 2"):
        oai.batches.create(input_file_id=twice.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match="No such File object: file-nope"):
        oai.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        oai.files.create(file=("r.jsonl", good), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")


def test_openai_refuses_a_file_of_more_than_50000_requests(server, oai):
    lines = b"".join(b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' % i
                     for i in range(50_001))
    uploaded = oai.files.create(file=("big.jsonl", lines), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="50001 requests; a batch takes at most 50000"):
        oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert server.stats()["batches"]["created"] == 0


def test_results_before_the_end_are_not_found(server, claude):
    batch = claude.messages.batches.create(requests=[{"custom_id": "a", "params": claude_params("hello")}])
    response = httpx2.get(f"{server.url}/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "sim"})
    assert response.status_code == 404 and "has not ended" in response.json()["error"]["message"]


def test_a_required_key_guards_the_batch_endpoints_in_each_wire_format(server, oai, claude):
    control(server, api_key="right")
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
        oai.batches.list()
    with pytest.raises(openai.AuthenticationError):
        oai.files.create(file=("r.jsonl", b""), purpose="batch")
    with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
        claude.messages.batches.list()
    keyed = openai.OpenAI(base_url=server.url + "/v1", api_key="right", max_retries=0, timeout=10)
    assert list(keyed.batches.list()) == []
    control(server, api_key=None)


# --- settings ---------------------------------------------------------------------------------------


def test_control_shows_and_changes_the_batch_settings(server):
    assert control(server) == {"mode": "ok", "retry_after_s": 1.0, "key_required": False,
                               "batch_delay_s": DELAY_S, "batch_error_rate": 0.0, "batch_expire_next": 0}
    assert control(server, batch_delay_s=0.5)["batch_delay_s"] == 0.5
    for bad in ({"batch_error_rate": 2}, {"batch_expire_next": 1.5}, {"batch_delay": 1}, {"mode": "ok", "x": 1}):
        response = httpx2.post(server.url + "/control", json=bad)
        assert response.status_code == 400, bad
    assert control(server)["batch_delay_s"] == 0.5


def test_the_batch_table_of_a_scenario_is_checked_like_the_others():
    scenario = parse_scenario("[batch]\ndelay_s = 2\nerror_rate = 0.1\nexpire_next = 3\n")
    assert (scenario.batch.delay_s, scenario.batch.error_rate, scenario.batch.expire_next) == (2.0, 0.1, 3)
    assert parse_scenario("seed = 1").batch == BatchProfile(delay_s=1.0, error_rate=0.0, expire_next=0)
    with pytest.raises(ConfigError, match="s.toml: batch.delay: unknown key"):
        parse_scenario("[batch]\ndelay = 2\n", "s.toml")
    with pytest.raises(ConfigError, match="batch.error_rate: must be between 0 and 1"):
        parse_scenario("[batch]\nerror_rate = 1.5\n")
    with pytest.raises(ConfigError, match="batch.expire_next: must be a non-negative integer"):
        parse_scenario("[batch]\nexpire_next = -1\n")
