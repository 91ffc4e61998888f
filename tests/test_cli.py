"""The CLI: cascade-submit's exits and summaries, resubmission without duplicates, budgets, URLs and keys refused
at load, every command's help, the ledger read when Redis is down (input rows: tests/test_input.py)."""

from __future__ import annotations

import base64

import orjson
import pytest
import redis
from click.testing import CliRunner

from cascade.cli.main import cascade
from cascade.cli.submit import EXIT_BUDGET, EXIT_FAILED, submit_command
from tests.cluster import SCENARIO, cascade_env, cluster_config, delete_namespace, read_jsonl, run_cli
from tests.helpers import TICKETS, copy_config, invoke, lines


def test_an_embedded_run_meeting_a_wrong_key_ends_saying_to_fix_it_and_run_again(tmp_path, sim):
    import httpx2

    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    httpx2.post(sim.url + "/control", json={"api_key": "right"})
    try:
        result = run_cli(["cascade-submit", str(source), "-p", "ticket-triage", "--out", str(tmp_path / "o.jsonl"),
                          "--no-progress", "--config", str(copy_config(tmp_path))],
                         {**cascade_env(None, sim.url), "CASCADE_PROVIDER_API_KEY": "wrong"})
    finally:
        httpx2.post(sim.url + "/control", json={"api_key": None})
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert stderr.rstrip().endswith("Error: tier 'cheap' cannot work: openai 401: Incorrect API key provided "
                                    "(simulated). Fix it and run the batch again")
    assert "its jobs wait. Fix the key or model and run the batch again." in stderr     # no workers to restart


def test_a_clean_file_exits_zero_and_prints_the_savings(tmp_path, sim):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(tmp_path / "o.jsonl"),
                                     "--no-progress", "--config", str(copy_config(tmp_path))],
                    cascade_env(None, sim.url))
    assert result.exit_code == 0, result.stderr
    assert "jobs: 5 of 5 done" in result.stderr
    assert "every job on frontier alone: $" in result.stderr and "savings $" in result.stderr


def test_json_summary_on_stdout(tmp_path, sim):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(tmp_path / "o.jsonl"),
                                     "--json", "--no-progress", "--config", str(copy_config(tmp_path))],
                    cascade_env(None, sim.url))
    summary = orjson.loads(result.stdout)
    assert summary["done"] == 5 and summary["mode"] == "embedded"
    assert sum(summary["statuses"].values()) == 5


def test_unknown_pipeline_is_a_clear_error(tmp_path, sim):
    result = invoke(submit_command, ["-", "-p", "triage", "--config", str(copy_config(tmp_path))],
                    cascade_env(None, sim.url))
    assert result.exit_code == 2
    assert "unknown pipeline 'triage'" in result.stderr


def test_resubmitting_a_batch_id_enqueues_no_job_twice(tmp_path, redis_url, sim):
    # Given a batch submitted to Redis with no worker running
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS[:3]))
    args = [str(source), "-p", "ticket-triage", "--batch-id", "again-1", "--no-progress", "--config", str(config)]
    try:
        first = invoke(submit_command, args, env)
        assert first.exit_code == 0, first.stderr
        assert not (config.parent / "cascade-ledger.db").exists()    # no ledger here: submitting made none
        queue = f"{ns}.tier.cheap\x06\x169"     # ordinary messages wait at priority 9
        client = redis.Redis.from_url(redis_url)
        assert client.llen(queue) == 3
        # When the same file, with two more rows, is submitted again under the same batch id
        source.write_bytes(lines(*TICKETS))
        second = invoke(submit_command, args, env)
        # Then only the new rows are enqueued
        assert second.exit_code == 0, second.stderr
        assert "2 jobs queued, 3 already submitted earlier" in second.stderr
        assert client.llen(queue) == 5
        status = invoke(cascade, ["status", "again-1", "--json", "--config", str(config)], env)
        assert orjson.loads(status.stdout)["jobs"] == 5
    finally:
        delete_namespace(redis_url, ns)


def test_status_of_a_batch_that_is_nowhere_says_where_it_looked(tmp_path):
    # embedded (no Redis URL): a finished batch is in the ledger, and this one is not
    result = invoke(cascade, ["status", "b1", "--config", str(copy_config(tmp_path))], {"CASCADE_REDIS_URL": ""})
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: no batch 'b1' in the ledger"


def test_every_command_has_help_with_an_example():
    def walk(group, prefix):
        for name, command in group.commands.items():
            yield f"{prefix} {name}", command
            if hasattr(command, "commands"):
                yield from walk(command, f"{prefix} {name}")

    for name, command in [("cascade-submit", submit_command), *walk(cascade, "cascade")]:
        assert "Example:" in (command.help or ""), name


def test_unreachable_redis_is_one_clear_line(tmp_path):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(TICKETS[0]))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--no-progress",
                                     "--config", str(copy_config(tmp_path))], {"CASCADE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1
    assert "Error: Redis: Error 111 connecting to 127.0.0.1:1. Connection refused." in result.stderr
    assert "Traceback" not in result.output


def test_a_budget_is_never_overspent_and_ends_the_rest_budget_exhausted(tmp_path, sim):
    # Given five jobs and a budget that fits two worst-case cheap calls (~$0.00009 each) but not five
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    out = tmp_path / "o.jsonl"
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--budget", "0.0002", "--out", str(out),
                                     "--json", "--no-progress", "--config", str(copy_config(tmp_path))],
                    cascade_env(None, sim.url))
    # Then every job has a record, some ran and the others ended budget_exhausted, within budget, and the exit
    # status says the budget ran out
    assert result.exit_code == EXIT_BUDGET, result.stderr
    summary = orjson.loads(result.stdout)
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == [row["id"] for row in TICKETS]
    statuses = summary["statuses"]
    assert statuses["budget_exhausted"] >= 1 and statuses["budget_exhausted"] < 5
    assert sum(statuses.values()) == 5
    assert summary["cost_usd"] <= 0.0002
    assert all(r["reason"].startswith("budget: next call on") for r in records if r["status"] == "budget_exhausted")


def test_a_resubmission_without_budget_still_reserves_against_the_first_runs(tmp_path, redis_url, sim):
    # Given a batch submitted with a budget, then resubmitted with more rows and no --budget
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS[:3]))
    args = [str(source), "-p", "ticket-triage", "--batch-id", "budgeted-1", "--no-progress", "--config", str(config)]
    client = redis.Redis.from_url(redis_url)
    try:
        assert invoke(submit_command, [*args, "--budget", "1"], env).exit_code == 0
        source.write_bytes(lines(*TICKETS))
        assert invoke(submit_command, args, env).exit_code == 0
        # Then five small job references are queued, and every job, the new ones too, carries the prompt
        # estimate its calls reserve against the first run's budget
        bodies = [orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))
                  for raw in client.lrange(f"{ns}.tier.cheap\x06\x169", 0, -1)]
        assert sorted(args[0]["id"] for args, _, _ in bodies) == ["r1", "r2", "r3", "r4", "r5"]
        live = client.hgetall(f"{ns}:batch:budgeted-1:live")
        assert len(live) == 5 and all(int(state.rsplit(b"|", 1)[1]) > 10 for state in live.values())
    finally:
        delete_namespace(redis_url, ns)
        client.close()


# -- input that is not what the producer expects: a clear line and an exit status, never a traceback -----


def test_a_redis_url_without_a_scheme_names_the_variable(tmp_path):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(TICKETS[0]))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--config", str(copy_config(tmp_path))],
                    {"CASCADE_REDIS_URL": "localhost:6379"})
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: environment CASCADE_REDIS_URL: must start with redis://, rediss:// or "
                                     "unix:// (got 'localhost:6379')")


@pytest.mark.parametrize("args, env, message", [
    # a Redis URL given by option with a bad port: the option is named and the password hidden
    (["--redis-url", "redis://:hunter2@127.0.0.1:notaport/0"], {},
     "option --redis-url: the port is not a number from 0 to 65535 (got 'redis://:***@127.0.0.1:notaport/0')"),
    # a provider URL that is no URL is refused at load (a run retried it for hours without naming the cause)
    ([], {"CASCADE_PROVIDER_BASE_URL": "notaurl", "CASCADE_PROVIDER_API_KEY": "x"},
     "environment CASCADE_PROVIDER_BASE_URL: must be an http:// or https:// URL with a host (got 'notaurl')"),
])
def test_a_url_that_cannot_work_is_refused_at_load_naming_where_it_came_from(tmp_path, args, env, message):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(TICKETS[0]))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--config", str(copy_config(tmp_path)),
                                     *args], env)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {message}"


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf", "1e300", "ten"])
def test_a_budget_that_is_not_a_positive_amount_is_a_usage_error(tmp_path, budget):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(TICKETS[0]))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--budget", budget,
                                     "--config", str(copy_config(tmp_path))], {})
    assert result.exit_code == 2 and "Traceback" not in result.output
    reason = " is not a number of USD" if budget == "ten" else ": give a positive amount of USD, at most 1e+09"
    assert f"Invalid value for '--budget': '{budget}'{reason}" in result.stderr


def test_results_written_over_the_input_or_into_a_missing_folder_are_refused_before_anything_runs(tmp_path, sim):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    config = str(copy_config(tmp_path))
    env = cascade_env(None, sim.url)
    same = invoke(submit_command, [str(source), "-p", "ticket-triage", "--wait", "--out", str(source),
                                   "--no-progress", "--config", config], env)
    assert same.exit_code == 2
    assert f"Invalid value for --out: {source} is the input file: write the results elsewhere" in same.stderr
    assert source.read_bytes() == lines(*TICKETS)           # the input is untouched
    missing = tmp_path / "no" / "such" / "out.jsonl"
    nowhere = invoke(submit_command, [str(source), "-p", "ticket-triage", "--wait", "--out", str(missing),
                                      "--no-progress", "--config", config], env)
    assert nowhere.exit_code == 2
    assert f"cannot write {missing}: folder {missing.parent} does not exist" in nowhere.stderr
    assert "embedded mode" not in nowhere.stderr         # refused before a store or a batch was opened


def test_a_missing_api_key_stops_an_embedded_run_before_anything_is_submitted(tmp_path, sim):
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    out = tmp_path / "o.jsonl"
    env = {"CASCADE_REDIS_URL": "", "CASCADE_PROVIDER_BASE_URL": "", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "x"}
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(out), "--no-progress",
                                     "--config", str(copy_config(tmp_path))], env)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: tier 'cheap': environment variable OPENAI_API_KEY is not set (the "
                                     "openai API key)")
    assert not out.exists()
    # and a base URL for every tier never silently stands in for a key
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--no-progress", "--config",
                                     str(copy_config(tmp_path / "b"))], {**env, "CASCADE_PROVIDER_BASE_URL": sim.url,
                                                                        "CASCADE_PROVIDER_API_KEY": ""})
    assert result.exit_code == 1
    assert (f"sends every tier to {sim.url}, and CASCADE_PROVIDER_API_KEY (that endpoint's key) is not set"
            in result.stderr)


def test_jobs_that_fail_give_exit_status_4(tmp_path, sim):
    # Given a pipeline whose last tier's answer can never pass, and that fails what it cannot verify
    config = copy_config(tmp_path)
    pipeline = config.parent / "pipelines" / "ticket-triage.toml"
    pipeline.write_text(pipeline.read_text().replace('on_last_failure = "accept_flagged"', 'on_last_failure = "fail"')
                        .replace('{ name = "truncation" },', '{ name = "truncation" }, { name = "regex", pattern = "^NEVER$" },'))
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS[:2]))
    result = invoke(submit_command, [str(source), "-p", "ticket-triage", "--out", str(tmp_path / "o.jsonl"),
                                     "--no-progress", "--config", str(config)], cascade_env(None, sim.url))
    assert result.exit_code == EXIT_FAILED
    assert "jobs: 2 of 2 done (failed 2)" in result.stderr


def test_wait_warns_when_no_worker_consumes_the_first_queue(tmp_path, redis_url, sim):
    import subprocess
    import time

    from tests.cluster import BIN

    config, ns = cluster_config(tmp_path)
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS[:2]))
    err = tmp_path / "err.txt"
    proc = subprocess.Popen([str(BIN / "cascade-submit"), str(source), "-p", "ticket-triage", "--wait", "--no-progress",
                             "--out", str(tmp_path / "o.jsonl"), "--config", str(config)],
                            env=cascade_env(redis_url, sim.url), stderr=err.open("wb"))
    try:
        deadline = time.monotonic() + 30
        while "warning: no worker is consuming" not in err.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
            time.sleep(0.2)
        assert (f"warning: no worker is consuming {ns}.tier.cheap: start one with `cascade worker --tier cheap`; "
                "the batch waits") in err.read_text()
    finally:
        proc.kill()
        proc.wait()
        delete_namespace(redis_url, ns)


def test_the_simulator_commands_say_in_one_line_what_they_cannot_do(tmp_path):
    import socket

    missing = run_cascade(["sim", "exec", "-s", str(SCENARIO), "--", str(tmp_path / "no-such-command")])
    assert missing.exit_code == 1
    assert f"Error: cannot run {tmp_path / 'no-such-command'}: No such file or directory" in missing.stderr
    assert run_cascade(["sim", "serve", "-s", str(SCENARIO), "--port", "99999"]).exit_code == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cascade(["sim", "serve", "-s", str(SCENARIO), "--port", str(port)])
    assert busy.exit_code == 1
    assert busy.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def run_cascade(args):
    return CliRunner().invoke(cascade, args, catch_exceptions=False)


def test_an_embedded_run_refuses_a_batch_id_the_ledger_already_holds(tmp_path, sim):
    # Given a batch run in embedded mode whose budget ran out
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    config = str(copy_config(tmp_path))
    env = cascade_env(None, sim.url)
    args = [str(source), "-p", "ticket-triage", "--batch-id", "emb-1", "--no-progress", "--config", config]
    first = invoke(submit_command, [*args, "--budget", "0.0002", "--out", str(tmp_path / "first.jsonl")], env)
    assert first.exit_code == EXIT_BUDGET
    assert "this embedded run is over: submit again with a higher --budget under a new --batch-id" in first.stderr
    calls = sim.stats()["totals"]["requests"]
    # When it is submitted again under the same id: refused before any call, the first run's records kept
    again = invoke(submit_command, [*args, "--budget", "1", "--out", str(tmp_path / "again.jsonl")], env)
    assert again.exit_code == 1
    assert "Error: batch emb-1 is already in the ledger (" in again.stderr
    assert "an embedded run cannot resume it, it would pay for every job again" in again.stderr
    assert not (tmp_path / "again.jsonl").exists()
    assert sim.stats()["totals"]["requests"] == calls


def test_the_ledger_service_in_embedded_mode_is_a_usage_error_that_creates_no_database(tmp_path):
    config = copy_config(tmp_path)
    result = invoke(cascade, ["ledger", "--once", "--config", str(config)], cascade_env(None, "http://127.0.0.1:1"))
    assert result.exit_code == 2
    assert ("Error: the ledger service needs a Redis URL (--redis-url or CASCADE_REDIS_URL); in embedded mode "
            "cascade-submit writes the ledger itself") in result.stderr
    assert not list(config.parent.glob("cascade-ledger.db*"))


def test_a_ledger_database_that_cannot_be_reached_is_named_as_such(tmp_path):
    env = {**cascade_env(None, "http://127.0.0.1:1"), "CASCADE_LEDGER_URL": "postgresql://cascade:pw@127.0.0.1:1/x"}
    result = invoke(cascade, ["batches", "--config", str(copy_config(tmp_path))], env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ledger postgresql+psycopg://cascade:***@127.0.0.1:1/x: cannot connect: ")
    assert "pw" not in result.stderr


def test_status_and_stats_read_the_ledger_when_redis_cannot_be_reached(tmp_path, sim):
    # Given a batch that ran (embedded) and is in the ledger
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    config = str(copy_config(tmp_path))
    ran = invoke(submit_command, [str(source), "-p", "ticket-triage", "--batch-id", "seen-1", "--no-progress",
                                  "--out", str(tmp_path / "out.jsonl"), "--config", config], cascade_env(None, sim.url))
    assert ran.exit_code == 0, ran.output
    # When Redis is configured but down: both say so, and show the ledger's figures
    down = {"CASCADE_REDIS_URL": "redis://127.0.0.1:1/0"}
    status = CliRunner().invoke(cascade, ["status", "seen-1", "--config", config], env=down)
    assert status.exit_code == 0, status.output
    assert "Redis cannot be reached (Error 111 connecting to 127.0.0.1:1. Connection refused.)" in status.stderr
    assert "batch seen-1 (finished, pipeline ticket-triage)" in status.stdout
    assert "jobs: 5 of 5 done" in status.stdout
    stats = CliRunner().invoke(cascade, ["stats", "--config", config], env=down)
    assert stats.exit_code == 0, stats.output
    assert "the ledger's figures follow" in stats.stderr
    assert "pipeline ticket-triage (batches in the ledger)" in stats.stdout
    follow = CliRunner().invoke(cascade, ["results", "seen-1", "--follow", "--config", config], env=down)
    assert follow.exit_code == 0, follow.output
    assert [r["id"] for r in map(orjson.loads, follow.stdout.splitlines())] == [r["id"] for r in read_jsonl(
        tmp_path / "out.jsonl")]


def test_controlling_a_batch_only_the_ledger_holds_says_its_live_state_is_gone(tmp_path, redis_url, sim):
    # Given a batch that ran embedded: it is in the ledger, never in Redis
    config, ns = cluster_config(tmp_path)
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(lines(*TICKETS))
    ran = invoke(submit_command, [str(source), "-p", "ticket-triage", "--batch-id", "gone-1", "--no-progress",
                                  "--out", str(tmp_path / "out.jsonl"), "--config", str(config)],
                 cascade_env(None, sim.url))
    assert ran.exit_code == 0, ran.output
    # When retry, budget and cancel are asked for it against the Redis
    for args in (["retry", "gone-1"], ["budget", "gone-1", "5"], ["cancel", "gone-1"]):
        result = CliRunner().invoke(cascade, [*args, "--config", str(config)], env={"CASCADE_REDIS_URL": redis_url})
        # Then each says where it looked, that the ledger has it, and what to do instead
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().endswith("the ledger has it (finished), but its live state is gone (it ran "
                                              "embedded, or its keys expired 7 days after it finished); submit its "
                                              "input again under a new --batch-id")
    assert not redis.Redis.from_url(redis_url).exists(f"{ns}:batch:gone-1")
