"""When a schedule fires: the slots of a cron expression (in a time zone) or of an interval, the
expression in words, and the checks of those fields. No queries here; `services.schedules`
decides what to do with a slot.

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
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cron_descriptor import Options, get_description  # type: ignore[import-untyped]
from cronsim import CronSim, CronSimError

from .conf import app_settings
from .models import Schedule, ScheduleCatchup, ScheduleOverlap

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


# --- a schedule's fields -----------------------------------------------------------------------


def recurrence_errors(values: dict[str, Any]) -> dict[str, list[str]]:
    """What is wrong with a schedule's timing fields (cron or interval, timezone, start_at,
    end_at, overlap, catchup), by field; {} when nothing is."""
    errors: dict[str, list[str]] = {}
    cron, interval = values.get("cron") or "", values.get("interval")
    if bool(cron) == (interval is not None):
        message = (
            "Give either cron (5 fields) or interval (seconds), not both."
            if cron
            else "Give cron or interval."
        )
        errors["cron" if cron else "interval"] = [message]
    elif cron:
        try:
            check_cron(cron)
        except InvalidRecurrence as exc:
            errors["cron"] = [str(exc)]
    elif not isinstance(interval, int) or interval < app_settings.SWEEP_INTERVAL:
        errors["interval"] = [
            f"Whole seconds, at least the sweep interval ({app_settings.SWEEP_INTERVAL:g} s)."
        ]
    try:
        time_zone(values.get("timezone") or "")
    except InvalidRecurrence as exc:
        errors["timezone"] = [str(exc)]
    for name in ("start_at", "end_at"):
        value = values.get(name)
        if value is not None and value.utcoffset() is None:
            errors[name] = ["Must include a time zone (for example 2030-01-01T09:00:00Z)."]
    start, end = values.get("start_at"), values.get("end_at")
    if start and end and "start_at" not in errors and "end_at" not in errors and end <= start:
        errors["end_at"] = ["Must be after start_at."]
    if values.get("overlap") not in ScheduleOverlap.values:
        errors["overlap"] = [f"One of: {', '.join(ScheduleOverlap.values)}."]
    if values.get("catchup") not in ScheduleCatchup.values:
        errors["catchup"] = [f"One of: {', '.join(ScheduleCatchup.values)}."]
    return errors


def preview(values: dict[str, Any], *, now: datetime, count: int) -> dict[str, Any]:
    """The expression in words and its next `count` slots after `now`, for a form that shows them
    before saving; InvalidRecurrence-free: check `recurrence_errors` first."""
    schedule = Schedule(
        cron=values.get("cron") or "",
        interval=values.get("interval"),
        timezone=values.get("timezone") or "UTC",
        start_at=values.get("start_at"),
        end_at=values.get("end_at"),
        created_at=now,
        enabled=True,
    )
    return {
        "description": describe(cron=schedule.cron, interval=schedule.interval, zone_name=schedule.timezone),
        "next_fire_times": next_fire_times(schedule, after=now, count=count),
    }


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
