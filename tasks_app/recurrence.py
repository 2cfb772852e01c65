"""When a schedule fires: the slots of a cron expression (in a time zone) or of an interval, and
the expression in words. No queries here; `services.schedules` decides what to do with a slot.

Cron expressions are the classic five fields, read by cronsim (Healthchecks' parser), in the
schedule's IANA time zone. Daylight saving time follows one rule:
- a slot in the hour the clocks skip fires once, at the first valid instant after it (30 2 * * *
  in Europe/Paris on 29 March 2026 fires at 03:00 CEST);
- a slot in the hour the clocks repeat fires once, at its first occurrence (30 2 * * * on
  25 October 2026 fires at 02:30 CEST, not again at 02:30 CET). This holds for every
  expression, an hourly one included: the repeated wall-clock times do not fire twice.
Intervals count whole seconds from the schedule's start (`start_at`, else when it was created),
so they ignore the time zone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cron_descriptor import Options, get_description  # type: ignore[import-untyped]
from cronsim import CronSim, CronSimError

if TYPE_CHECKING:
    from .models import Schedule

CRON_FIELDS = 5


class InvalidRecurrence(ValueError):
    """An expression or a time zone that cannot be used; the message says why."""


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. "Europe/Paris"); InvalidRecurrence if there is none."""
    if not name or name not in available_timezones():
        try:
            return ZoneInfo(name)  # aliases such as "UTC" are not always listed
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidRecurrence(
                f"Unknown time zone {name!r}; use an IANA name such as Europe/Paris."
            ) from None
    return ZoneInfo(name)


def check_cron(expression: str) -> None:
    """InvalidRecurrence unless `expression` is a valid five-field cron expression."""
    fields = expression.split()
    if len(fields) != CRON_FIELDS:
        raise InvalidRecurrence(
            f"A cron expression has {CRON_FIELDS} fields (minute hour day-of-month month day-of-week); "
            f"this one has {len(fields)}."
        )
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise InvalidRecurrence(f"Not a valid cron expression: {exc}.") from None


def cron_slots(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The cron expression's slots strictly after `after`, in UTC, oldest first, endless."""
    for local in CronSim(expression, after.astimezone(zone)):
        if local.fold:  # the second pass through a repeated hour: that wall-clock time has fired
            continue
        yield local.astimezone(UTC)


def interval_slots(seconds: int, anchor: datetime, after: datetime) -> Iterator[datetime]:
    """anchor + k * seconds for every k with a slot strictly after `after`, oldest first."""
    step = timedelta(seconds=seconds)
    k = max(0, math.floor((after - anchor) / step) + 1)
    while True:
        yield anchor + k * step
        k += 1


def describe(*, cron: str, interval: int | None, zone_name: str) -> str:
    """The recurrence in words: "At 09:00, Monday through Friday, Europe/Paris"; "Every 15 minutes"."""
    if interval:
        return f"Every {_seconds_in_words(interval)}"
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    return f"{get_description(cron, options)}, {zone_name}"


def _seconds_in_words(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}" if n != 1 else unit
    return f"{seconds} seconds" if seconds != 1 else "second"


# --- a schedule's slots -------------------------------------------------------------------------


def slots_after(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """The schedule's slots strictly after `after`, oldest first, within start_at and end_at."""
    if schedule.start_at and after < schedule.start_at:
        after = schedule.start_at - timedelta(microseconds=1)
    if schedule.interval:
        anchor = schedule.start_at or schedule.created_at
        slots = interval_slots(schedule.interval, anchor, after)
    else:
        slots = cron_slots(schedule.cron, time_zone(schedule.timezone), after)
    for slot in slots:
        if schedule.end_at and slot > schedule.end_at:
            return
        yield slot


def first_slot(schedule: Schedule, after: datetime) -> datetime | None:
    return next(slots_after(schedule, after), None)


def next_fire_times(schedule: Schedule, *, after: datetime, count: int) -> list[datetime]:
    """The next `count` slots after `after` (fewer when end_at comes first); none while paused."""
    if not schedule.enabled:
        return []
    return [slot for _, slot in zip(range(count), slots_after(schedule, after), strict=False)]
