"""The ledger database: one SQLAlchemy Core code path for SQLite (a file, the default) and PostgreSQL (a cluster).

Schema changes are Alembic migrations (migrations/versions/); `Ledger.migrate()` brings a database to the
newest one, and every process that opens the ledger for writing calls it. Results are written with an
insert that ignores a (batch, job) already there, unless the new record is a later retry round: a record
delivered twice is stored once.
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import bindparam, create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from cascade.errors import ConfigError
from cascade.ledger.schema import alerts, batches, results, schedule_runs, shadow_pairs, tier_figures

log = logging.getLogger("cascade.ledger")

DEFAULT_FILE = "cascade-ledger.db"     # beside cascade.toml when [ledger] url is empty


class LedgerError(Exception):
    """The ledger database cannot be reached or refused a write; the message never holds a password.
    `passing`: the database could not be reached (restarting, a dropped connection, SQLite busy), so the
    same call may go through later; otherwise it refused the call (a schema or constraint error)."""

    def __init__(self, message: str, passing: bool = False):
        super().__init__(message)
        self.passing = passing


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def ledger_url(url: str, config_dir: Path) -> str:
    """The SQLAlchemy URL for a configured one: empty -> the SQLite file beside cascade.toml; postgres:// and
    postgresql:// -> the psycopg (3) driver."""
    if not url:
        return f"sqlite:///{(Path(config_dir) / DEFAULT_FILE).resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if not url.startswith(("sqlite:", "postgresql+")):
        raise ConfigError(f"ledger.url: use sqlite:///path/to/file.db or postgresql://user@host/db "
                          f"(got {redact_url(url)!r})")
    return url


def open_ledger(settings: Any) -> Ledger:
    """The ledger the settings name ([ledger] url or CASCADE_LEDGER_URL; empty: the SQLite file beside the config)."""
    return Ledger(ledger_url(settings.ledger.url, settings.config_dir))


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One result record read back from the ledger, with its arrival number."""

    seq: int
    batch_id: str
    job_id: str
    status: str
    record: bytes


class Ledger:
    """Reads and writes of one ledger database; safe to share between threads."""

    def __init__(self, url: str):
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "sqlite":
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrated = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({redact_url(self.url)})"

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the database to the newest schema (idempotent; concurrent callers take turns)."""
        if self._migrated:
            return
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(resources.files("cascade.ledger").joinpath("migrations")))
        with self._lock, self._file_lock():
            try:
                conn = self.engine.connect()
            except SQLAlchemyError as e:     # not reached: what any command that reads the ledger first meets
                raise _error(f"ledger {redact_url(self.url)}: cannot connect: {_short(e)}", e) from None
            try:
                with conn, conn.begin():
                    if self.dialect == "postgresql":    # two writers starting at once migrate one after the other
                        conn.execute(text("SELECT pg_advisory_xact_lock(4120131)"))
                    config.attributes["connection"] = conn
                    before = MigrationContext.configure(conn).get_current_revision()
                    command.upgrade(config, "head")
                    after = MigrationContext.configure(conn).get_current_revision()
            except SQLAlchemyError as e:
                raise _error(f"ledger {redact_url(self.url)}: cannot migrate: {_short(e)}", e) from None
            if after != before:
                log.info("ledger %s: schema upgraded from %s to %s", redact_url(self.url), before or "empty", after)
            self._migrated = True

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """For a SQLite file, an exclusive lock beside it while migrating: two processes that start at once on a
        new file (beat and `cascade ledger`) would otherwise both create the first tables. PostgreSQL takes an
        advisory lock instead."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            yield
            return
        try:
            handle = open(f"{database}.migrate-lock", "a")    # noqa: SIM115 (closed below, after the lock)
        except OSError as e:
            raise LedgerError(f"ledger {redact_url(self.url)}: cannot create the database file: "
                              f"{e.strerror or e} ({Path(database).parent})") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- writes ----------------------------------------------------------------------------

    def write_results(self, records: Sequence[bytes]) -> int:
        """Store result records (JSON) once each, in one transaction; return how many rows are new.

        A record of a later retry round replaces the earlier one, under a new arrival number (a follower
        that already read the old one sees the new one too); any other record of a (batch, job) already
        there is ignored: that is what makes a delivery twice a delivery once."""
        if not records:
            return 0
        rows = [_result_row(orjson.loads(raw), raw) for raw in records]
        retried = [{"b": r["batch_id"], "j": r["job_id"], "r": r["retry_round"]} for r in rows if r["retry_round"]]
        insert = (self._insert(results).on_conflict_do_nothing(index_elements=[results.c.batch_id, results.c.job_id])
                  .returning(results.c.seq))
        try:
            with self.engine.begin() as conn:
                if retried:
                    conn.execute(results.delete().where(results.c.batch_id == bindparam("b"),
                                                        results.c.job_id == bindparam("j"),
                                                        results.c.retry_round < bindparam("r")), retried)
                return len(conn.execute(insert, rows).all())
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: cannot write results: {_short(e)}", e) from None

    def upsert_batch(self, row: dict[str, Any], figures: Sequence[dict[str, Any]] = ()) -> None:
        """Create or update a batch row (and, once it is finished, its per-tier figures)."""
        insert = self._insert(batches)
        statement = insert.on_conflict_do_update(index_elements=[batches.c.id],
                                                 set_={k: insert.excluded[k] for k in row if k != "id"})
        try:
            with self.engine.begin() as conn:
                conn.execute(statement, row)
                if figures:
                    conn.execute(tier_figures.delete().where(tier_figures.c.batch_id == row["id"]))
                    conn.execute(tier_figures.insert(), list(figures))
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: cannot write batch {row['id']}: {_short(e)}", e) from None

    def _insert(self, table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    # -- operations: alerts, shadow pairs, scheduled runs -------------------------------------

    def record_alert(self, row: dict[str, Any]) -> None:
        """Keep an alert that fired or cleared (`cascade alerts` reads them back)."""
        self._write(alerts.insert(), [{"at": time.time(), **row}], "alert")

    def alerts(self, since: float = 0.0, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Alerts at or after `since` (epoch s), oldest first."""
        query = select(alerts).where(alerts.c.at >= since).order_by(alerts.c.id)
        return self._all(query.where(alerts.c.pipeline == pipeline) if pipeline else query)

    def write_shadow_pairs(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store shadow pairs once each (a pair delivered twice is stored once); return how many are new."""
        insert = (self._insert(shadow_pairs).on_conflict_do_nothing(
            index_elements=[shadow_pairs.c.batch_id, shadow_pairs.c.job_id]).returning(shadow_pairs.c.job_id))
        return self._write(insert, [{"at": time.time(), **r} for r in rows], "shadow pairs") if rows else 0

    def shadow_pairs(self, pipeline: str, since: float = 0.0) -> list[dict[str, Any]]:
        """A pipeline's shadow pairs at or after `since`, oldest first."""
        return self._all(select(shadow_pairs).where(shadow_pairs.c.pipeline == pipeline, shadow_pairs.c.at >= since)
                         .order_by(shadow_pairs.c.at))

    def claim_schedule_run(self, schedule: str, run_date: str, batch_id: str) -> bool:
        """Record that a schedule's run for a date starts; False when a run for that date exists already."""
        now = time.time()
        insert = (self._insert(schedule_runs).on_conflict_do_nothing(
            index_elements=[schedule_runs.c.schedule, schedule_runs.c.run_date]).returning(schedule_runs.c.schedule))
        row = {"schedule": schedule, "run_date": run_date, "batch_id": batch_id, "state": "submitting", "reason": "",
               "started_at": now, "updated_at": now}
        return self._write(insert, [row], f"schedule run {schedule} {run_date}") == 1

    def update_schedule_run(self, schedule: str, run_date: str, state: str, reason: str = "",
                            restart: bool = False) -> None:
        """Set a scheduled run's state (submitted | failed) and why; `restart`: it starts again now."""
        now = time.time()
        values = {"state": state, "reason": reason, "updated_at": now} | ({"started_at": now} if restart else {})
        statement = (schedule_runs.update()
                     .where(schedule_runs.c.schedule == schedule, schedule_runs.c.run_date == run_date)
                     .values(**values))
        self._write(statement, None, f"schedule run {schedule} {run_date}")

    def schedule_runs(self, schedule: str | None = None) -> list[dict[str, Any]]:
        """Scheduled runs, newest date first."""
        query = select(schedule_runs).order_by(schedule_runs.c.run_date.desc(), schedule_runs.c.schedule)
        return self._all(query.where(schedule_runs.c.schedule == schedule) if schedule else query)

    def _write(self, statement, rows: Sequence[dict[str, Any]] | None, what: str) -> int:
        """Run one write in its own transaction; the rows it returned (or touched)."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(statement, list(rows)) if rows is not None else conn.execute(statement)
                return len(result.all()) if result.returns_rows else result.rowcount
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: cannot write {what}: {_short(e)}", e) from None

    # -- reads -----------------------------------------------------------------------------

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch row, or None."""
        return self._one(select(batches).where(batches.c.id == batch_id))

    def batches(self, pipeline: str | None = None, since: float | None = None, limit: int = 1000
                ) -> list[dict[str, Any]]:
        """Batch rows, newest first."""
        query = select(batches).order_by(batches.c.submitted_at.desc()).limit(limit)
        if pipeline:
            query = query.where(batches.c.pipeline == pipeline)
        if since is not None:
            query = query.where(batches.c.submitted_at >= since)
        return self._all(query)

    def result_count(self, batch_id: str) -> int:
        """How many jobs of the batch have their record in the ledger."""
        return int(self._scalar(select(func.count()).select_from(results).where(results.c.batch_id == batch_id)))

    def job_ids(self, batch_id: str) -> set[str]:
        """The jobs of the batch whose record the ledger holds (what a resubmission need not run again)."""
        query = select(results.c.job_id).where(results.c.batch_id == batch_id)
        return {row["job_id"] for row in self._all(query)}

    def results(self, batch_id: str, after: int = 0, status: Sequence[str] = (), limit: int = 5000
                ) -> list[ResultRow]:
        """Up to `limit` records of a batch that arrived after arrival number `after`, in arrival order."""
        query = (select(results.c.seq, results.c.batch_id, results.c.job_id, results.c.status, results.c.record)
                 .where(results.c.batch_id == batch_id, results.c.seq > after).order_by(results.c.seq).limit(limit))
        if status:
            query = query.where(results.c.status.in_(list(status)))
        return [ResultRow(r["seq"], r["batch_id"], r["job_id"], r["status"], r["record"].encode())
                for r in self._all(query)]

    def iter_results(self, batch_id: str, status: Sequence[str] = ()) -> Iterator[ResultRow]:
        """Every record of a batch, in arrival order, read in pages."""
        after = 0
        while True:
            page = self.results(batch_id, after, status)
            if not page:
                return
            yield from page
            after = page[-1].seq

    def tagged(self, since: float, pipelines: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        """Results finished since `since` (epoch s) with their tags, attempts and costs (for `stats --by`)."""
        query = (select(results.c.tags, results.c.attempts, results.c.cost_nanos, results.c.counterfactual_nanos,
                        results.c.status, results.c.record, batches.c.pipeline)
                 .join(batches, batches.c.id == results.c.batch_id).where(results.c.finished_at >= since))
        names = list(pipelines)
        if names:
            query = query.where(batches.c.pipeline.in_(names))
        try:
            with self.engine.connect() as conn:
                for row in conn.execution_options(stream_results=True).execute(query).mappings():
                    yield dict(row)
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: {_short(e)}", e) from None

    def tier_figures(self, batch_id: str) -> list[dict[str, Any]]:
        """The per-tier figures of a finished batch, in ladder order."""
        return self._all(select(tier_figures).where(tier_figures.c.batch_id == batch_id)
                         .order_by(tier_figures.c.position))

    def _all(self, query) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as conn:
                return [dict(row) for row in conn.execute(query).mappings()]
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: {_short(e)}", e) from None

    def _one(self, query) -> dict[str, Any] | None:
        rows = self._all(query.limit(1))
        return rows[0] if rows else None

    def _scalar(self, query) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).scalar()
        except SQLAlchemyError as e:
            raise _error(f"ledger {redact_url(self.url)}: {_short(e)}", e) from None

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()


def _result_row(record: dict[str, Any], raw: bytes) -> dict[str, Any]:
    return {
        "batch_id": record["batch"],
        "job_id": record["id"],
        "retry_round": record.get("retry_round", 0),
        "status": record["status"],
        "tier": record.get("tier") or "-",
        "model": record.get("model"),
        "cost_nanos": round(record.get("cost_usd", 0.0) * 1e9),
        "counterfactual_nanos": round(record.get("counterfactual_usd", 0.0) * 1e9),
        "attempts": len(record.get("attempts", ())),
        "reason": record.get("reason"),
        "tags": record.get("tags"),
        "record": raw.decode(),
        "finished_at": record.get("finished_at") or time.time(),
    }


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")       # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")       # a commit is on disk before its records are acked in Redis
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _error(message: str, error: SQLAlchemyError) -> LedgerError:
    """A LedgerError for `error`: passing when the database was not reached (it may answer later)."""
    unreached = isinstance(error, (OperationalError, InterfaceError)) or getattr(error, "connection_invalidated", False)
    return LedgerError(message, passing=bool(unreached))


def _short(error: SQLAlchemyError) -> str:
    """The database's own words, one line, no SQL text or parameters (they may hold a whole record)."""
    original = getattr(error, "orig", None)
    words = str(original) if original is not None else str(error).split("\n", 1)[0]
    return redact_url(" ".join(words.split()))[:300]
