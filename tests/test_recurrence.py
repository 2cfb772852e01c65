"""`recurrence`: the slots of cron expressions and intervals, the daylight saving rule (around
the real transitions of Europe/Paris in 2026), and expressions in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from tasks_app import recurrence

PARIS = recurrence.time_zone("Europe/Paris")


def slots(expression: str, after: datetime, n: int) -> list[datetime]:
    return list(islice(recurrence.cron_slots(expression, PARIS, after), n))


def paris(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=PARIS, fold=fold)


def test_a_daily_slot_in_the_skipped_hour_fires_once_at_the_first_valid_instant():
    # 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that night.
    fired = slots("30 2 * * *", paris(2026, 3, 28, 12, 0), 3)
    assert fired == [
        paris(2026, 3, 29, 3, 0).astimezone(UTC),  # the first instant after the gap
        paris(2026, 3, 30, 2, 30).astimezone(UTC),
        paris(2026, 3, 31, 2, 30).astimezone(UTC),
    ]
    assert all(slot.tzinfo is UTC for slot in fired)


def test_a_slot_in_the_repeated_hour_fires_once_at_its_first_occurrence():
    # 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    fired = slots("30 2 * * *", paris(2026, 10, 24, 12, 0), 2)
    assert fired == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    # An expression that matches every half hour: the repeated wall-clock times fire once too.
    half_hourly = slots("*/30 * * * *", paris(2026, 10, 25, 1, 50), 4)
    assert [slot.astimezone(PARIS).strftime("%H:%M %Z") for slot in half_hourly] == [
        "02:00 CEST",
        "02:30 CEST",
        "03:00 CET",  # 02:00 and 02:30 CET are skipped: those wall-clock times fired already
        "03:30 CET",
    ]
    assert len(set(half_hourly)) == len(half_hourly) and half_hourly == sorted(half_hourly)


def test_a_weekday_expression_in_paris_keeps_its_local_time_across_the_change():
    before = slots("0 9 * * 1-5", paris(2026, 3, 26, 12, 0), 3)
    assert [slot.astimezone(PARIS).strftime("%a %H:%M") for slot in before] == [
        "Fri 09:00",
        "Mon 09:00",
        "Tue 09:00",
    ]
    assert [slot.hour for slot in before] == [8, 7, 7]  # UTC hours: CET, then CEST


def test_interval_slots_count_from_the_anchor_strictly_after():
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    got = list(islice(recurrence.interval_slots(600, anchor, anchor + timedelta(seconds=600)), 2))
    assert got == [anchor + timedelta(seconds=1200), anchor + timedelta(seconds=1800)]
    first = next(recurrence.interval_slots(600, anchor, anchor - timedelta(days=1)))
    assert first == anchor


@pytest.mark.parametrize(
    ("expression", "reason"),
    [("61 * * * *", "Not a valid cron expression"), ("* * *", "has 3"), ("@daily", "has 1"), ("", "has 0")],
)
def test_bad_cron_expressions_say_why(expression, reason):
    with pytest.raises(recurrence.InvalidRecurrence, match=reason):
        recurrence.check_cron(expression)


def test_unknown_time_zones_are_refused_and_iana_names_taken():
    for name in ("Mars/Olympus", "", "Europe/Pariss"):
        with pytest.raises(recurrence.InvalidRecurrence, match="IANA"):
            recurrence.time_zone(name)
    assert recurrence.time_zone("UTC").key == "UTC"


def test_expressions_in_words():
    assert recurrence.describe(cron="0 9 * * 1-5", interval=None, zone_name="Europe/Paris") == (
        "At 09:00, Monday through Friday, Europe/Paris"
    )
    assert recurrence.describe(cron="", interval=900, zone_name="UTC") == "Every 15 minutes"
    assert recurrence.describe(cron="", interval=3600, zone_name="UTC") == "Every hour"
    assert recurrence.describe(cron="", interval=90, zone_name="UTC") == "Every 90 seconds"
