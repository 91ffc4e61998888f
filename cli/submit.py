"""`cascade-submit` (also `cascade submit`): read a file, submit it as one batch, optionally wait for the results."""

from __future__ import annotations

import itertools
import os
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from cascade.cli.common import USD, Command, config_option, load, redact, redis_option
from cascade.errors import BatchGone, CascadeError, InputError
from cascade.ledger.database import DEFAULT_FILE, LedgerError, open_ledger, redact_url
from cascade.ledger.writer import LedgerWriter
from cascade.producer import resume
from cascade.producer.collect import Collector, RecordWriter
from cascade.producer.reader import check_encoding, read_rows
from cascade.producer.report import format_summary, summarize
from cascade.producer.submit import Submitter
from cascade.producer.waiting import BatchWait
from cascade.producer.watch import TierStopped, Watch
from cascade.worker.store import BatchRecord

EXIT_REJECTED = 3    # the batch ran, but some input rows were rejected
EXIT_FAILED = 4      # --wait: some jobs ended failed
EXIT_BUDGET = 5      # --wait: some jobs ended budget_exhausted
EXIT_CANCELLED = 6   # --wait: the batch was cancelled


def new_batch_id(pipeline: str) -> str:
    """A fresh batch id: pipeline, UTC time, and a short random suffix."""
    return f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"


class Progress:
    """A progress bar on stderr whose total grows while the input streams."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        # delay: no "0/0 jobs" bar before the first rows are counted
        self.bar = tqdm(total=0, unit="job", file=sys.stderr, disable=not enabled, dynamic_ncols=True, delay=0.5,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, record: BatchRecord) -> None:
        """Show `done` of `total` from a batch record."""
        self.bar.total = record.total
        self.bar.n = record.done
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
@click.option("--budget", type=USD(), help="USD cap for the batch; jobs end budget_exhausted when a call won't fit.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True)
@click.option("--encoding", default="utf-8", show_default=True,
              help="Text encoding of the input (a UTF-8 byte-order mark is skipped).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line on stdout.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@config_option
@redis_option
def submit_command(source: str, pipeline: str, batch_id: str | None, wait: bool, out: str | None,
                   budget: float | None, fmt: str, encoding: str, as_json: bool, progress: bool,
                   config_path: str | None, redis_url: str | None) -> None:
    """Submit a JSONL or CSV file (or - for stdin) as one batch.

    Example: cascade-submit tickets.jsonl --pipeline ticket-triage --wait --out results.jsonl

    Rejected rows are reported on stderr with their line and in OUT.rejected.jsonl (with the raw row);
    valid rows still run. Exit status: 0 all accepted, 1 a configuration, connection or input-file
    error (nothing submitted), 2 a usage error, 3 rows were rejected; with --wait also 4 jobs failed,
    5 jobs ran out of budget, 6 the batch was cancelled (the first that applies of 4, 5, 6, 3).
    """
    if out:
        _check_out(out, source)
    settings = load(config_path, redis_url)
    try:
        pipe = settings.pipeline(pipeline)
    except CascadeError as e:
        raise click.BadParameter(str(e), param_hint="--pipeline") from None
    if as_json and wait and not out:
        raise click.UsageError("--json prints the summary on stdout: give --out for the results")
    try:
        check_encoding(encoding)
    except LookupError:
        raise click.BadParameter(f"unknown encoding '{encoding}'", param_hint="--encoding") from None
    fmt = fmt if fmt != "auto" else ("csv" if source.lower().endswith(".csv") else "jsonl")
    batch = batch_id or new_batch_id(pipeline)
    from cascade.worker.backends import open_backend

    def rows():
        stream = sys.stdin.buffer if source == "-" else _open_source(source, stack)
        return read_rows(stream, fmt, settings.producer.max_row_bytes, encoding)

    with ExitStack() as stack:
        first_rows = _peeked(rows(), source)      # an unreadable or empty file creates no batch
        try:
            backend = open_backend(settings, pipeline=pipe)
        except CascadeError as e:
            raise click.ClickException(str(e)) from None
        stack.callback(backend.close)
        ledger = None
        if backend.mode == "embedded":
            wait = True   # the in-memory store lives only as long as this process
            ledger = _open_ledger(settings)
            stack.callback(ledger.close)
            _refuse_a_batch_run_before(ledger, batch)
            click.echo("cascade-submit: embedded mode (no Redis URL configured): workers and store run in this "
                       "process", err=True)
        else:
            click.echo(f"cascade-submit: distributed mode: {redact(settings.redis.url)}, first queue "
                       f"{settings.tiers[pipe.ladder[0]].queue_name}", err=True)
        rejected_out = _RejectedFile(out)
        stack.callback(rejected_out.close)
        bar = Progress(progress)
        stack.callback(bar.close)
        say = lambda message: bar.bar.write(f"cascade-submit: {message}", file=sys.stderr)
        submitter = Submitter(backend, settings, pipe, batch, round((budget or 0) * 1e9),
                              on_reject=lambda err: rejected_out.write(err, bar), say=say)
        run = submitter.open(source if source != "-" else "stdin")
        first_rows = resume.first_rows(run, backend.mode == "distributed", first_rows,
                                       lambda: _kept(settings, batch, say), say, batch)
        waiting = None
        if wait:
            # the file is written from the ledger, which holds every run's records: a resumed run rewrites it
            sink = stack.enter_context(open(out, "wb")) if out else sys.stdout.buffer
            if ledger is None:      # embedded mode opened it already
                ledger = _open_ledger(settings)
                stack.callback(ledger.close)
            collector = Collector(ledger, batch, RecordWriter(sink),
                                  LedgerWriter(settings, backend.store.redis, ledger))
            waiting = BatchWait(submitter, collector, Watch(backend, settings, pipe, say), bar.update, say)
            submitter.while_waiting = waiting.tick
        try:
            result = submitter.run(first_rows)
            click.echo(f"cascade-submit: batch {batch}: {result.published} jobs queued"
                       + (f", {result.already_submitted} already submitted earlier" if result.already_submitted
                          else "")
                       + (f", {len(result.rejected)} rows rejected" if result.rejected else "")
                       + (" (the batch was cancelled: the rest of the input was not read)" if result.cancelled
                          else ""), err=True)
            if waiting is None:
                resume.submit_forgotten(submitter, rows if source != "-" else None,
                                        lambda: _kept(settings, batch, say), say)
                click.echo(f"cascade-submit: follow it with: cascade status {batch} / cascade results {batch} "
                           "--follow", err=True)
                record = None
            else:
                record = waiting.until_finished(rows if source != "-" else None)
                if backend.shadows is not None:     # embedded: the shadow jobs run now, after the real work
                    backend.finish_shadows()
                    waiting.collector.collect()
                    record = waiting.record()
                bar.close()
        except TierStopped as e:
            raise click.ClickException(str(e)) from None
        except BatchGone as e:      # waiting on stdin's batch, which cannot be read again
            raise click.ClickException(f"{e}; stdin cannot be read again: submit the input again under --batch-id "
                                       f"{batch} (jobs whose records the ledger holds are not run again)") from None
        except LedgerError as e:
            raise click.ClickException(str(e)) from None
        if record is not None:
            summary = summarize(record.counters, settings, pipe)
            summary["batch"] = batch
            summary["mode"] = backend.mode
            if as_json:
                click.echo(orjson.dumps(summary).decode())
            else:
                click.echo(format_summary(summary, f"batch {batch} ({backend.mode}, pipeline {pipe.name})"), err=True)
                if summary["statuses"].get("budget_exhausted"):
                    fix = (f"raise it with `cascade budget {batch} USD` and run them with "
                           f"`cascade retry {batch} --status budget_exhausted`" if backend.mode == "distributed" else
                           "this embedded run is over: submit again with a higher --budget under a new --batch-id")
                    click.echo(f"budget: ran out: {summary['statuses']['budget_exhausted']} jobs ended "
                               f"budget_exhausted; {fix}", err=True)
            if out:
                click.echo(f"results: {waiting.collector.out.written} records written to {out} (from the ledger, "
                           f"{redact_url(ledger.url)})", err=True)
    if result.rejected:
        where = f" (listed in {rejected_out.path})" if rejected_out.path else ""
        click.echo(f"cascade-submit: {len(result.rejected)} rows rejected{where}", err=True)
    sys.exit(exit_status(record, bool(result.rejected)))


def exit_status(record: BatchRecord | None, rejected: bool) -> int:
    """The documented exit status: 4 failed, 5 budget exhausted, 6 cancelled, 3 rejected rows, else 0."""
    counters = record.counters if record is not None else {}
    if counters.get("status:failed"):
        return EXIT_FAILED
    if counters.get("status:budget_exhausted"):
        return EXIT_BUDGET
    if counters.get("status:cancelled") or (record is not None and record.state == "cancelled"):
        return EXIT_CANCELLED
    return EXIT_REJECTED if rejected else 0


def _refuse_a_batch_run_before(ledger, batch: str) -> None:
    """An embedded run cannot resume a batch: what was submitted before lived in another process's store, so every
    job would run (and be paid) again, while the ledger keeps the first run's records."""
    try:
        found = ledger.batch(batch)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    if found is not None:
        raise click.ClickException(
            f"batch {batch} is already in the ledger ({redact_url(ledger.url)}, {found['state']}): an embedded run "
            "cannot resume it, it would pay for every job again. Submit under a new --batch-id (or none), or resume "
            "it with the Redis it ran on")


def _kept(settings, batch: str, say) -> set[str]:
    """The jobs of the batch whose records the ledger holds (not run again); none when it cannot say, or no
    ledger was ever written here (reading it would create its file)."""
    if not settings.ledger.url and not (settings.config_dir / DEFAULT_FILE).exists():
        return set()
    try:
        ledger = open_ledger(settings)
        try:
            ledger.migrate()
            return ledger.job_ids(batch)
        finally:
            ledger.close()
    except LedgerError as e:
        say(f"the ledger cannot say which jobs of {batch} are done ({e}); every row not in Redis runs again")
        return set()


def _open_ledger(settings):
    """The ledger of these settings, migrated: a ClickException when it cannot be reached."""
    ledger = open_ledger(settings)
    try:
        ledger.migrate()
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    return ledger


def _peeked(rows, source: str):
    """The rows, once the first one has been read: an empty input is an error before any batch exists."""
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        raise click.ClickException(f"{'stdin' if source == '-' else source}: no rows (the input is empty); "
                                   "nothing was submitted")
    return itertools.chain([first], iterator)


def _check_out(out: str, source: str) -> None:
    """--out (and OUT.rejected.jsonl beside it) must be writable and must not be the input: opening it for
    writing would empty the input while it is still being read."""
    results, rejected = Path(out), Path(f"{out}.rejected.jsonl")
    if source != "-" and Path(source).exists():
        for path in (results, rejected):
            if path.exists() and path.samefile(source):
                raise click.BadParameter(f"{path} is the input file: write the results elsewhere", param_hint="--out")
    folder = results.parent
    if not folder.is_dir():
        raise click.BadParameter(f"cannot write {out}: folder {folder} does not exist", param_hint="--out")
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {out}: folder {folder} is not writable", param_hint="--out")


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
            self._file.write(orjson.dumps({"line": error.line, "reason": error.reason, "row": error.raw}) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
