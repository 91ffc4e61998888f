"""`cascade beat`: real Celery beat whose due entries submit scheduled batches in the beat process itself.

Celery beat decides when (crontab in the schedule's zone, or an every_s slot); instead of sending a task
message that some worker would have to consume, `ScheduleScheduler.apply_async` runs `run_schedule` on a
small thread pool here. One process to run, nothing more to deploy, and the tick still goes through beat's
own loop. The ledger is beat's memory: a restarted beat starts each entry from its latest run in the
ledger (so a tick missed while beat was down runs once when it is back) and every run is claimed there
first (so nothing is submitted twice). Every MAINTAIN_S the beat also resumes runs left `submitting` by a
process that died and writes the export of runs whose batch has finished. A due run whose ledger does not
answer (the database restarting) is tried again every LEDGER_RETRY_S, for up to LEDGER_PATIENCE_S.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from celery.beat import Scheduler

from cascade.ledger.database import Ledger, LedgerError
from cascade.ops.schedules import RunOutcome, key_time, maintain, run_key, run_schedule, timing
from cascade.worker.config.schema import Settings
from cascade.worker.store import BatchStore

log = logging.getLogger("cascade.beat")

SCHEDULE_TASK = "cascade.schedule"   # the entries' task name; never sent as a message
MAINTAIN_S = 2.0                     # how often stale runs are resumed and finished batches exported
RUN_THREADS = 4                      # schedules submitting at once; beat's loop never waits for one
LEDGER_RETRY_S = 5.0                 # a due run whose ledger does not answer is tried again this often...
LEDGER_PATIENCE_S = 3600.0           # ...for this long


class ScheduleScheduler(Scheduler):
    """Celery beat's scheduler for [schedules]; `settings` and `ledger` are set by `scheduler_class`."""

    settings: Settings
    ledger: Ledger

    def __init__(self, *args: Any, **kwargs: Any):
        self._pool = ThreadPoolExecutor(RUN_THREADS, thread_name_prefix="cascade-schedule")
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._maintained = 0.0
        self._stopping = threading.Event()
        self._said_maintain = -math.inf
        self._store: BatchStore | None = None       # where the resume check looks for lost batches, opened once
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """One entry per schedule, each starting from its latest run in the ledger."""
        entries = {name: {"task": SCHEDULE_TASK, "schedule": timing(s), "args": (name,)}
                   for name, s in self.settings.schedules.items()}
        self.merge_inplace(entries)
        for name, schedule in self.settings.schedules.items():
            runs = self.ledger.schedule_runs(name)
            if runs:
                try:
                    self.data[name].last_run_at = key_time(schedule, runs[0]["run_date"])
                except ValueError:      # the schedule changed between cron and every_s: start from now
                    pass

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Beat's "send the due task": start the run here (Celery's version would log a message it never sends)."""
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception:       # one schedule's trouble never stops beat
            log.exception("schedule %s: the tick could not start", entry.name)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> None:
        """Run the due entry's schedule here, on the pool: the run the tick belongs to, claimed in the ledger."""
        entry = self.reserve(entry) if advance else entry
        name = entry.args[0]
        key = run_key(self.settings.schedules[name], datetime.now(UTC))
        log.info("schedule %s: tick for run %s", name, key)
        self._start(name, key)

    def _start(self, name: str, key: str) -> None:
        with self._lock:
            if (name, key) in self._running:
                return
            self._running.add((name, key))
        self._pool.submit(self._run, name, key)

    def _run(self, name: str, key: str) -> None:
        try:
            outcome = self._patiently(name, key)
            if outcome is not None and outcome.outcome in ("already", "busy"):  # the others were logged already
                log.info("%s", outcome.message)
        except Exception:       # a bug: `cascade schedules run` runs it by hand
            log.exception("schedule %s: run %s could not start", name, key)
        finally:
            with self._lock:
                self._running.discard((name, key))

    def _patiently(self, name: str, key: str) -> RunOutcome | None:
        """`run_schedule`, tried again while the ledger does not answer (a tick is due once: a restarting
        database must not cost the night's run); None when beat stops or the patience ran out first."""
        since, said = time.monotonic(), -math.inf
        while True:
            try:
                return run_schedule(self.settings, name, key, self.ledger)
            except LedgerError as error:
                if not error.passing:
                    raise
                waited = time.monotonic() - since
                if waited >= LEDGER_PATIENCE_S:
                    log.error("schedule %s: run %s not started: the ledger did not answer for %.0f min (%s); run it "
                              "with `cascade schedules run %s --date %s`", name, key, waited / 60, error, name, key)
                    return None
                if time.monotonic() - said >= 60:      # said once a minute
                    said = time.monotonic()
                    log.warning("schedule %s: run %s waits for the ledger (%s); trying again every %.0f s", name,
                                key, error, LEDGER_RETRY_S)
            if self._stopping.wait(LEDGER_RETRY_S):
                return None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Beat's tick, plus the periodic resume and export check."""
        interval = super().tick(*args, **kwargs)
        if time.monotonic() - self._maintained >= MAINTAIN_S:
            self._maintained = time.monotonic()
            self._start_maintenance()
        return min(interval, MAINTAIN_S)

    def _start_maintenance(self) -> None:
        with self._lock:
            if ("", "maintain") in self._running:
                return
            self._running.add(("", "maintain"))
        self._pool.submit(self._maintain)

    def _maintain(self) -> None:
        try:
            if self._store is None and not self.settings.embedded:
                from cascade.worker.backends import batch_store, redis_client

                self._store = batch_store(self.settings, redis_client(self.settings))
            maintain(self.settings, self.ledger, self._store)
        except LedgerError as error:
            if time.monotonic() - self._said_maintain >= 60:      # a database restarting: said once a minute
                self._said_maintain = time.monotonic()
                log.warning("beat: resume/export check: %s; trying again every %.0f s", error, MAINTAIN_S)
        except Exception:
            log.exception("beat: resume/export check failed; trying again in %.0f s", MAINTAIN_S)
        finally:
            with self._lock:
                self._running.discard(("", "maintain"))

    def close(self) -> None:
        """Stop taking work and close beat's connections; submissions in progress finish before the process
        exits (a killed one is resumed later).

        Celery calls this from its SIGTERM handler, on the main thread, wherever the signal interrupted it:
        perhaps holding the logging lock a pool thread is waiting for. Waiting here for the pool would then
        never end, so it does not: the interpreter joins the pool's threads at exit, once the handler's
        SystemExit has unwound the interrupted frames and released what they held.
        """
        self._stopping.set()        # a run waiting for the ledger gives up: the next beat catches it up
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.redis.close()
        super().close()

    @property
    def info(self) -> str:
        """What beat's banner shows."""
        return f"{len(self.settings.schedules)} schedules, runs recorded in {self.ledger!r}"


def scheduler_class(settings: Settings, ledger: Ledger) -> type[ScheduleScheduler]:
    """A ScheduleScheduler bound to these settings and ledger (Celery instantiates the class itself)."""
    return type("ScheduleScheduler", (ScheduleScheduler,), {"settings": settings, "ledger": ledger})


def run_beat(settings: Settings, ledger: Ledger, loglevel: str = "INFO") -> None:
    """Run Celery beat with the schedules until SIGTERM or Ctrl-C."""
    from cascade.worker.celery_app import create_app

    app = create_app(settings)
    app.conf.beat_max_loop_interval = MAINTAIN_S
    beat = app.Beat(scheduler=scheduler_class(settings, ledger), loglevel=loglevel, max_interval=MAINTAIN_S,
                    redirect_stdouts=False, quiet=True)
    beat.run()
