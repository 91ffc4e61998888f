"""cascade-submit's input: every bad row named by the line it starts on and why, valid rows processed, files
that cannot be read refused before a batch exists."""

from __future__ import annotations

import pytest
import redis

from cascade.cli.submit import EXIT_REJECTED, submit_command
from tests.cluster import cascade_env, cluster_config, read_jsonl
from tests.helpers import TICKETS, copy_config, invoke, lines


def test_bad_rows_are_named_by_line_and_valid_rows_still_run(tmp_path, sim):
    # Given a file with one row of each kind of mistake among valid rows
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(
        TICKETS[0],
        b'{"id": "r-bad", "subject": "x", "body": ',                 # line 2: bad JSON
        {"subject": "no id", "body": "b"},                           # line 3: missing id
        TICKETS[1],
        {"id": "r1", "subject": "again", "body": "dup"},             # line 5: duplicate id
        {"id": "r-nobody", "subject": "only a subject"},             # line 6: missing template field
        b"",                                                         # blank lines are not rows
        TICKETS[2],
    ))
    out = tmp_path / "out.jsonl"
    # When it is submitted in embedded mode
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", str(copy_config(tmp_path))], cascade_env(None, sim.url))
    # Then each bad row is reported with its line, the valid ones ran, and the exit status says so
    assert result.exit_code == EXIT_REJECTED
    stderr = result.stderr
    assert "rejected: line 2: invalid JSON: " in stderr
    assert "rejected: line 3: missing 'id'" in stderr
    assert "rejected: line 5: duplicate id 'r1' (first on line 1)" in stderr
    assert "rejected: line 6: missing field 'body' used by the prompt" in stderr
    assert "4 rows rejected" in stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["r1", "r2", "r3"]
    rejected = read_jsonl(tmp_path / "out.jsonl.rejected.jsonl")
    assert sorted(r["line"] for r in rejected) == [2, 3, 5, 6]   # duplicates are found when a chunk registers
    assert {"line": 3, "reason": "missing 'id'", "row": '{"subject":"no id","body":"b"}'} in rejected
    assert {"line": 5, "reason": "duplicate id 'r1' (first on line 1)",
            "row": '{"id":"r1","subject":"again","body":"dup"}'} in rejected


def test_csv_input_and_an_oversized_row(tmp_path, sim):
    config = copy_config(tmp_path, lambda t: t.replace("max_row_bytes = 65536", "max_row_bytes = 100"))
    source = tmp_path / "jobs.csv"
    source.write_text("id,subject,body\nc1,Login,I cannot log in\nc2,Big," + "x" * 200 + "\nc3,Box,Package lost\n")
    out = tmp_path / "out.jsonl"
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", str(config)], cascade_env(None, sim.url))
    assert result.exit_code == EXIT_REJECTED
    assert "rejected: line 3: row is 205 bytes, over the limit of 100" in result.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["c1", "c3"]


def test_csv_lines_are_named_as_in_the_file_and_an_open_quote_says_where_it_runs(tmp_path, sim):
    # Given a CSV with an undecodable line, a short row after it, a legal quoted line break, and a quote left open
    source = tmp_path / "jobs.csv"
    source.write_bytes(b'id,subject,body\nc1,Login,I cannot log in\nc2,\xff,x\nc3,Box\n'
                       b'c4,Two lines,"first\nsecond"\nc5,"Open,quote\nc6,Box,lost\nc7,Box,late\n')
    out = tmp_path / "out.jsonl"
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", str(copy_config(tmp_path))], cascade_env(None, sim.url))
    # Then each rejection names the line the row starts on; the open quote says how far it ran; valid rows go on
    assert result.exit_code == EXIT_REJECTED
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert rejected == [
        "rejected: line 3: not valid utf-8 (byte 0xff at column 4); give --encoding when the file uses another one",
        "rejected: line 4: missing value(s) for column(s): body",
        ("rejected: line 7: missing value(s) for column(s): body (a quoted value runs from line 7 to line 9: is a "
         "quote left open?)")]
    assert sorted(r["id"] for r in read_jsonl(out)) == ["c1", "c4"]


def test_a_utf8_byte_order_mark_is_read_past_in_jsonl_and_csv(tmp_path, sim):
    config = str(copy_config(tmp_path))
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + lines(*TICKETS[:2]))
    csv_file = tmp_path / "bom.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfid,subject,body\nc1,Login,I cannot log in\n")
    for source in (jsonl, csv_file):
        out = tmp_path / f"{source.suffix}.out"
        result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                         "--config", config], cascade_env(None, sim.url))
        assert result.exit_code == 0, result.stderr
        assert len(read_jsonl(out)) == (2 if source is jsonl else 1)


def test_a_line_that_is_not_utf8_is_rejected_by_line_and_encoding_reads_it(tmp_path, sim):
    source = tmp_path / "latin.jsonl"
    source.write_bytes(lines(TICKETS[0]) + '{"id": "r9", "subject": "Caf\u00e9", "body": "d\u00e9j\u00e0"}\n'.encode("latin-1"))
    config = str(copy_config(tmp_path))
    out = tmp_path / "o.jsonl"
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", config], cascade_env(None, sim.url))
    assert result.exit_code == EXIT_REJECTED
    assert ("rejected: line 2: not valid utf-8 (byte 0xe9 at column 29); give --encoding when the file uses "
            "another one") in result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["r1"]
    again = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                    "--encoding", "latin-1", "--config", config], cascade_env(None, sim.url))
    assert again.exit_code == 0, again.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["r1", "r9"]


@pytest.mark.parametrize("kind", ["empty", "missing", "directory"])
def test_an_input_that_cannot_be_read_or_is_empty_creates_no_batch(tmp_path, redis_url, sim, kind):
    config, ns = cluster_config(tmp_path)
    source = {"empty": tmp_path / "empty.jsonl", "missing": tmp_path / "nope.jsonl", "directory": tmp_path}[kind]
    if kind == "empty":
        source.write_bytes(b"\n\n")
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--batch-id", "none-1", "--no-progress",
                                     "--config", str(config)], cascade_env(redis_url, sim.url))
    expected = {"empty": (1, f"Error: {source}: no rows (the input is empty); nothing was submitted"),
                "missing": (2, f"Invalid value for SOURCE: cannot read {source}: No such file or directory"),
                "directory": (2, f"Invalid value for 'SOURCE': File '{source}' is a directory.")}[kind]
    assert result.exit_code == expected[0]
    assert expected[1] in result.stderr and "Traceback" not in result.output
    assert not redis.Redis.from_url(redis_url).exists(f"{ns}:batch:none-1")


def test_rejected_rows_are_said_in_line_order_with_duplicate_ids_among_them(tmp_path, sim):
    # Given chunks of 3 rows, a duplicate id on line 2 (found when its chunk registers) and a broken line 3
    config = copy_config(tmp_path, lambda t: t.replace("chunk_size = 500", "chunk_size = 3"))
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(TICKETS[0], TICKETS[0], b"{broken", *TICKETS[1:4]))
    out = tmp_path / "out.jsonl"
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", str(config)], cascade_env(None, sim.url))
    # Then the rejections come in the file's order, and every valid row ran once
    assert result.exit_code == EXIT_REJECTED
    said = [line.split(":")[1].strip() for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert said == ["line 2", "line 3"]
    assert "rejected: line 2: duplicate id 'r1' (first on line 1)" in result.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["r1", "r2", "r3", "r4"]
