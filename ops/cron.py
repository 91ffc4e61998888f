"""When a schedule fires: a 5-field cron expression in a time zone (Celery's `crontab`), or every N seconds.

Celery beat asks a schedule `is_due(last_run_at)`; both kinds here answer in the schedule's own time zone,
so `0 2 * * *` in Europe/Berlin fires at 02:00 Berlin time in winter and summer alike. `previous_run` gives
the occurrence a tick belongs to (a late tick still belongs to the slot it was due for), `next_runs` what
`cascade schedules` shows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab, schedstate

#: the five fields of a cron expression, in order, as messages name them
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRONTAB_ARGS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
LOOKBACK_DAYS = 400     # previous_run looks this far back for the last occurrence (a yearly cron has one)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message names the field."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. Europe/Berlin), or CronError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone '{name}' (an IANA name such as UTC or Europe/Berlin)") from None


class ZonedCrontab(crontab):
    """Celery's crontab, matched in one time zone whatever the Celery app's timezone is."""

    def __init__(self, tz: ZoneInfo, **fields: Any):
        super().__init__(nowfun=lambda: datetime.now(tz), **fields)
        self.tz = tz            # shadows BaseSchedule's cached `tz` (the app's): fields match in this zone

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock minute `local` (in this zone) is an occurrence."""
        return (local.month in self.month_of_year and local.day in self.day_of_month
                and local.isoweekday() % 7 in self.day_of_week and local.hour in self.hour
                and local.minute in self.minute)


class Every(BaseSchedule):
    """Fires at each multiple of `seconds` since the epoch: slots are aligned to the clock, so two beats (or a
    restarted one) agree on which slot a tick belongs to."""

    def __init__(self, seconds: int, tz: ZoneInfo):
        super().__init__(nowfun=lambda: datetime.now(tz))
        self.seconds = seconds
        self.tz = tz

    def slot(self, moment: datetime) -> int:
        """The start (epoch seconds) of the slot that holds `moment`."""
        epoch = moment.timestamp()
        return int(epoch // self.seconds) * self.seconds

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now to the first slot after the one of `last_run_at`."""
        start = self.slot(self.maybe_make_aware(last_run_at)) + self.seconds
        return timedelta(seconds=start - self.now().timestamp())

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due once the clock is in a later slot than `last_run_at`; else the seconds until it is."""
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining <= 0:
            return schedstate(True, self.slot(self.now()) + self.seconds - self.now().timestamp())
        return schedstate(False, remaining)

    def __repr__(self) -> str:
        return f"<every {self.seconds} s>"


def parse_cron(expression: str, tz_name: str = "UTC") -> ZonedCrontab:
    """A crontab for `minute hour day-of-month month day-of-week` in time zone `tz_name`, or CronError.

    Names (mon-fri, jan) and 7 for Sunday are accepted. When both day-of-month and day-of-week are
    restricted, a day must match both (Celery's rule; classic cron takes either)."""
    tz = zone(tz_name)
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"'{expression}' has {len(parts)} fields; a cron expression has five: "
                        + " ".join(CRON_FIELDS))
    parts[4] = _sunday_as_zero(parts[4])
    for field, arg, value in zip(CRON_FIELDS, _CRONTAB_ARGS, parts):
        try:
            crontab(**{arg: value})
        except ValueError as e:
            raise CronError(f"'{expression}': {field} '{value}': {e}") from None
    try:
        return ZonedCrontab(tz, **dict(zip(_CRONTAB_ARGS, parts)))
    except ValueError as e:     # fields valid one by one that never meet (31 February)
        raise CronError(f"'{expression}': {e}") from None


def _sunday_as_zero(field: str) -> str:
    """Cron allows 7 for Sunday; Celery counts 0-6."""
    out = []
    for item in field.split(","):
        head, _, step = item.partition("/")
        if head == "7":
            head = "0"
        elif head.endswith("-7") and head[:-2].isdigit():
            head = f"{head[:-2]}-6" + ("" if step else ",0")
        out.append(head + (f"/{step}" if step else ""))
    return ",".join(out)


def fires_per_day(cron: ZonedCrontab) -> int:
    """How many times a day the expression fires (on a day it fires at all)."""
    return len(cron.hour) * len(cron.minute)


def previous_run(when: ZonedCrontab | Every, now: datetime) -> datetime:
    """The latest occurrence at or before `now`, in the schedule's zone: the slot a tick at `now` runs."""
    if isinstance(when, Every):
        return datetime.fromtimestamp(when.slot(now), when.tz)
    local = now.astimezone(when.tz).replace(tzinfo=None, second=0, microsecond=0)   # walk wall-clock minutes
    floor = local - timedelta(days=LOOKBACK_DAYS)
    while local > floor:
        if not (local.month in when.month_of_year and local.day in when.day_of_month
                and local.isoweekday() % 7 in when.day_of_week):
            local = local.replace(hour=0, minute=0) - timedelta(minutes=1)     # the day before, 23:59
            continue
        if when.matches(local):
            return local.replace(tzinfo=when.tz)
        local -= timedelta(minutes=1)
    raise CronError(f"no occurrence in the last {LOOKBACK_DAYS} days")


def next_run(when: ZonedCrontab | Every, after: datetime) -> datetime:
    """The first occurrence strictly after `after` (Celery's own arithmetic for a crontab)."""
    if isinstance(when, Every):
        return datetime.fromtimestamp(when.slot(after) + when.seconds, when.tz)
    start, delta, _ = when.remaining_delta(after.astimezone(when.tz))
    return (start + delta).astimezone(when.tz)


def next_runs(when: ZonedCrontab | Every, after: datetime | None = None, n: int = 3) -> list[datetime]:
    """The next `n` occurrences after `after` (default: now)."""
    moment = after or datetime.now(UTC)
    out = []
    for _ in range(n):
        moment = next_run(when, moment)
        out.append(moment)
    return out
