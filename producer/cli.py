"""The `cascade` and `cascade-submit` commands: thin shells over the producer and worker libraries."""

from __future__ import annotations

import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any, BinaryIO

import click
import orjson

from producer.cli_common import Command, Group, config_option, load, redact, redis_option
from producer.cli_eval import calibrate_command, replay_command
from producer.cli_ops import sim, worker
from producer.reader import read_rows
from producer.report import format_summary, summarize
from producer.results import ResultDrain
from producer.submit import Submitter
from worker.config import Settings
from worker.errors import CascadeError, InputError

EXIT_REJECTED = 3   # the batch ran, but some input rows were rejected

def new_batch_id(pipeline: str) -> str:
    """A fresh batch id: pipeline, UTC time, and a short random suffix."""
    return f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"


class Progress:
    """A progress bar on stderr whose total grows while the input streams."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="job", file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, info: dict[str, Any]) -> None:
        """Show `done` of `total` from a batch record."""
        self.bar.total = int(info.get("total", 0))
        self.bar.n = int(info.get("done", 0))
        self.bar.refresh()

    def close(self) -> None:
        """Leave the final bar on screen."""
        self.bar.close()


@click.command("submit", cls=Command)
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False, exists=False))
@click.option("--pipeline", "-p", required=True, help="Pipeline name (a file in config/pipelines/).")
@click.option("--batch-id", help="Batch id; reuse one to resume a stopped submission without duplicates.")
@click.option("--wait", is_flag=True, help="Wait for every result and write them as JSONL.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Results file (default: stdout).")
@click.option("--budget", type=float, help="USD cap for the batch; jobs end budget_exhausted when a call won't fit.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line on stdout.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@config_option
@redis_option
def submit_command(source: str, pipeline: str, batch_id: str | None, wait: bool, out: str | None,
                   budget: float | None, fmt: str, as_json: bool, progress: bool,
                   config_path: str | None, redis_url: str | None) -> None:
    """Submit a JSONL or CSV file (or - for stdin) as one batch.

    Example: cascade-submit tickets.jsonl --pipeline ticket-triage --wait --out results.jsonl

    Rejected rows are reported on stderr with their line and in OUT.rejected.jsonl; valid rows
    still run. Exit status 3 when any row was rejected.
    """
    settings = load(config_path, redis_url)
    try:
        pipe = settings.pipeline(pipeline)
    except CascadeError as e:
        raise click.BadParameter(str(e), param_hint="--pipeline") from None
    if as_json and wait and not out:
        raise click.UsageError("--json prints the summary on stdout: give --out for the results")
    fmt = fmt if fmt != "auto" else ("csv" if source.lower().endswith(".csv") else "jsonl")
    batch = batch_id or new_batch_id(pipeline)
    from worker.backends import open_backend

    with ExitStack() as stack:
        try:
            backend = open_backend(settings)
        except CascadeError as e:
            raise click.ClickException(str(e)) from None
        stack.callback(backend.close)
        if backend.mode == "embedded":
            wait = True   # the in-memory store lives only as long as this process
            click.echo("cascade-submit: embedded mode (no Redis URL configured): workers and store run in this "
                       "process", err=True)
        else:
            click.echo(f"cascade-submit: distributed mode: {redact(settings.redis.url)}, first queue "
                       f"{settings.tiers[pipe.ladder[0]].queue_name}", err=True)
        rejected_out = _RejectedFile(out)
        stack.callback(rejected_out.close)
        bar = Progress(progress)
        stack.callback(bar.close)
        submitter = Submitter(backend, settings, pipe, batch, round((budget or 0) * 1e9),
                              on_reject=lambda err: rejected_out.write(err, bar))
        run = submitter.open()
        drain = None
        if wait:
            sink = stack.enter_context(open(out, "ab" if run > 1 else "wb")) if out else sys.stdout.buffer
            drain = ResultDrain(backend.store, batch, sink)

            def tick() -> None:
                drain.drain()
                bar.update(backend.store.batch_info(batch))

            submitter.while_waiting = tick
        source_stream = sys.stdin.buffer if source == "-" else _open_source(source, stack)
        result = submitter.run(read_rows(source_stream, fmt, settings.producer.max_row_bytes))
        click.echo(f"cascade-submit: batch {batch}: {result.published} jobs queued"
                   + (f", {result.already_submitted} already submitted earlier" if result.already_submitted else "")
                   + (f", {len(result.rejected)} rows rejected" if result.rejected else ""), err=True)
        if drain is None:
            click.echo(f"cascade-submit: follow it with: cascade status {batch} / cascade results {batch} --follow",
                       err=True)
        else:
            drain.wait(on_progress=bar.update)
            bar.close()
            summary = summarize(backend.store.batch_info(batch), settings, pipe)
            summary["batch"] = batch
            summary["mode"] = backend.mode
            if as_json:
                click.echo(orjson.dumps(summary).decode())
            else:
                click.echo(format_summary(summary, f"batch {batch} ({backend.mode}, pipeline {pipe.name})"), err=True)
            if out:
                click.echo(f"results: {drain.written} records written to {out}", err=True)
    if result.rejected:
        where = f" (listed in {rejected_out.path})" if rejected_out.path else ""
        click.echo(f"cascade-submit: {len(result.rejected)} rows rejected{where}", err=True)
        sys.exit(EXIT_REJECTED)


def _open_source(source: str, stack: ExitStack) -> BinaryIO:
    try:
        return stack.enter_context(open(source, "rb"))
    except OSError as e:
        raise click.BadParameter(f"cannot read {source}: {e.strerror}", param_hint="SOURCE") from None


class _RejectedFile:
    """Rejected rows: a line each on stderr, and OUT.rejected.jsonl when an output file is given."""

    def __init__(self, out: str | None):
        self.path = f"{out}.rejected.jsonl" if out else None
        self._file: BinaryIO | None = None

    def write(self, error: InputError, bar: Progress) -> None:
        bar.bar.write(f"rejected: line {error.line}: {error.reason}", file=sys.stderr)
        if self.path:
            if self._file is None:
                self._file = open(self.path, "wb")
            self._file.write(orjson.dumps({"line": error.line, "reason": error.reason}) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@click.group(cls=Group)
@click.version_option(package_name="cascade")
def cascade() -> None:
    """Cascade: batch LLM work through cheap-first model tiers with verified escalation.

    Example: cascade worker --tier cheap
    """


cascade.add_command(submit_command)


def _distributed_store(settings: Settings):
    if settings.embedded:
        raise click.UsageError("this command needs a Redis URL (--redis-url or CASCADE_REDIS_URL): "
                               "an embedded batch lives only inside the process that ran it")
    import redis

    from worker.backends import batch_store

    return batch_store(settings, redis.Redis.from_url(settings.redis.url))


@cascade.command()
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_option
@redis_option
def status(batch: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Show a batch's progress, per-tier figures, cost and savings.

    Example: cascade status ticket-triage-20261122-081500-ab12
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    try:
        info = store.batch_info(batch)
    except CascadeError as e:
        raise click.BadParameter(str(e), param_hint="BATCH") from None
    if not info:
        raise click.ClickException(f"no batch '{batch}' in {redact(settings.redis.url)}")
    pipe = load_pipeline(settings, str(info["pipeline"]))
    summary = summarize(info, settings, pipe) | {"batch": batch, "state": info.get("state")}
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(format_summary(summary, f"batch {batch} ({info.get('state')}, pipeline {pipe.name})"))


def load_pipeline(settings: Settings, name: str):
    """A pipeline by name or a ClickException."""
    try:
        return settings.pipeline(name)
    except CascadeError as e:
        raise click.ClickException(str(e)) from None


@cascade.command()
@click.argument("batch")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Append the records to this file (default: stdout).")
@click.option("--follow", "-f", is_flag=True, help="Keep draining until the batch is finished.")
@click.option("--keep", is_flag=True, help="Leave the records in Redis (default: delete each once written).")
@config_option
@redis_option
def results(batch: str, out: str | None, follow: bool, keep: bool, config_path: str | None,
            redis_url: str | None) -> None:
    """Write a batch's result records as JSONL, removing them from Redis once written.

    Example: cascade results ticket-triage-20261122-081500-ab12 --follow --out results.jsonl
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    with ExitStack() as stack:
        sink = stack.enter_context(open(out, "ab")) if out else sys.stdout.buffer
        drain = ResultDrain(store, batch, sink, trim=not keep)
        if follow:
            drain.wait()
        else:
            drain.drain()
    click.echo(f"results: {drain.written} records" + (f" appended to {out}" if out else ""), err=True)


@cascade.command()
@click.option("--pipeline", "-p", "names", multiple=True, help="Only these pipelines (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per pipeline.")
@config_option
@redis_option
def stats(names: tuple[str, ...], as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Per pipeline and tier: attempts, escalation rate, reject reasons, tokens, cost, savings.

    Example: cascade stats --pipeline ticket-triage
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    for name in names or sorted(settings.pipelines):
        pipe = load_pipeline(settings, name)
        summary = summarize(store.pipeline_counters(name), settings, pipe)
        if as_json:
            click.echo(orjson.dumps(summary).decode())
        else:
            click.echo(format_summary(summary, f"pipeline {name} (all batches)"))


cascade.add_command(worker)
cascade.add_command(sim)
cascade.add_command(replay_command)
cascade.add_command(calibrate_command)
