"""`manage.py schedules ...`: recurring jobs at a terminal, as `manage.py jobs` does for jobs.
Reads go through the schedule selectors and changes through `services.schedules`, as the person
named by --user (default: LONGRUN_CLI_USER, else the first superuser). Output is for people;
--json prints the API's representation for scripts."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tasks_app import recurrence, schedule_selectors
from tasks_app.exceptions import JobStateError, JobValidationError
from tasks_app.management.cli import acting_user
from tasks_app.models import Schedule, ScheduleCatchup, ScheduleOverlap
from tasks_app.serializers import job_representation, schedules_representation
from tasks_app.services import schedules

NO_TIME = "-"
LIST_COLUMNS = ("ID", "NAME", "OWNER", "TYPE", "WHEN", "STATE", "NEXT RUN", "LAST RUN")


class Command(BaseCommand):
    help = "List, add, pause, resume and run schedules (recurring jobs); sync those declared in code."

    def add_arguments(self, parser: CommandParser) -> None:
        add_common_options(parser)
        commands = parser.add_subparsers(dest="command", required=True, parser_class=type(parser))

        listing = commands.add_parser("list", help="The schedules the user may see, by name.")
        add_common_options(listing, in_subcommand=True)

        add = commands.add_parser("add", help="Create a schedule owned by the user.")
        add_common_options(add, in_subcommand=True)
        add.add_argument("name")
        add.add_argument("--type", dest="job_type", required=True, help="The job type each slot submits.")
        when = add.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", help='Five fields in --timezone, such as "0 9 * * 1-5".')
        when.add_argument("--interval", type=int, metavar="SECONDS", help="Seconds between slots.")
        add.add_argument("--timezone", help="An IANA name such as Europe/Paris (default UTC).")
        add.add_argument(
            "--params", metavar="JSON", help="The job's params as a JSON object: '{\"n\": 1000}'."
        )
        add.add_argument("--priority", type=int)
        add.add_argument("--overlap", choices=ScheduleOverlap.values, help="While the previous job runs.")
        add.add_argument("--catchup", choices=ScheduleCatchup.values, help="For slots missed in downtime.")

        for name, text in (
            ("pause", "Stop firing until resumed."),
            ("resume", "Fire again from the next slot after now."),
            ("run", "Submit the schedule's job now, outside its slots; prints the job's id."),
        ):
            changing = commands.add_parser(name, help=text)
            add_common_options(changing, in_subcommand=True)
            changing.add_argument("schedule", metavar="NAME|ID")

        sync = commands.add_parser(
            "sync", help="Make the schedules declared in code match their declarations."
        )
        add_common_options(sync, in_subcommand=True)

    def handle(self, *args: Any, command: str, **options: Any) -> None:
        self.as_json = bool(options["json"])
        if command == "sync":
            return self.sync()
        user = self.user(options["user"])
        if command == "list":
            return self.listing(user)
        if command == "add":
            return self.add(user, options)
        schedule = self.find(user, options["schedule"])
        if not schedule_selectors.may_change_schedule(user, schedule):
            raise CommandError(
                f"{user.get_username()} may see schedule {schedule.name!r} but not change it "
                "(the change_job permission)."
            )
        if command == "run":
            return self.run(user, schedule)
        if command == "pause":
            schedule = schedules.schedule_pause(schedule_id=schedule.pk)
        else:
            schedule = schedules.schedule_resume(schedule_id=schedule.pk)
        self.emit(
            schedules_representation([schedule])[0], f"{schedule.pk} {schedule.name!r}: {state_of(schedule)}"
        )

    # --- reads --------------------------------------------------------------------------------

    def listing(self, user: Any) -> None:
        visible = list(schedule_selectors.schedule_list_visible(user))
        if self.as_json:
            return self.emit(schedules_representation(visible))
        if not visible:
            self.stdout.write("No schedules.")
            return
        # The newest job, whether a slot's or a run now's, is the last run the table shows.
        last_jobs = schedule_selectors.schedule_recent_jobs([schedule.pk for schedule in visible], limit=1)
        rows = [LIST_COLUMNS]
        for schedule in visible:
            last = last_jobs[schedule.pk][0] if last_jobs[schedule.pk] else None
            rows.append(
                (
                    str(schedule.pk),
                    schedule.name,
                    schedule.owner.get_username(),
                    schedule.type,
                    describe(schedule),
                    state_of(schedule),
                    local_time(schedule.next_fire_at),
                    f"{local_time(last['created_at'])} {last['status']}" if last else NO_TIME,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(LIST_COLUMNS))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for schedule in visible:
            if schedule.disabled_reason:
                self.stdout.write(f"{schedule.name!r} was disabled: {schedule.disabled_reason}")

    # --- changes ------------------------------------------------------------------------------

    def add(self, user: Any, options: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"name": options["name"], "type": options["job_type"]}
        if options["params"] is not None:
            fields["params"] = parse_params(options["params"])
        # Only what was given: the service's defaults stand for the rest.
        for name in ("cron", "interval", "timezone", "priority", "overlap", "catchup"):
            if options[name] is not None:
                fields[name] = options[name]
        try:
            schedule = schedules.schedule_create(owner=user, **fields)
        except JobValidationError as exc:
            raise refusal("Schedule not created", exc) from None
        self.emit(
            schedules_representation([schedule])[0],
            f"{schedule.pk}: {describe(schedule)}; next run {local_time(schedule.next_fire_at)}",
        )

    def run(self, user: Any, schedule: Schedule) -> None:
        try:
            job = schedules.schedule_run_now(schedule_id=schedule.pk, actor=user)
        except JobStateError as exc:
            raise CommandError(exc.message) from None
        self.emit(job_representation(job), str(job.pk))

    def sync(self) -> None:
        try:
            counts = schedules.schedules_sync()
        except JobValidationError as exc:
            raise refusal("A schedule declared in code is not valid; sync stopped", exc) from None
        self.emit(
            counts,
            f"Schedules declared in code: {counts['created']} created, {counts['updated']} updated, "
            f"{counts['deleted']} deleted.",
        )

    # --- helpers ------------------------------------------------------------------------------

    def user(self, username: str | None) -> Any:
        return acting_user(username)

    def find(self, user: Any, reference: str) -> Schedule:
        """The schedule with this id, else with this name: the user's own first (names are unique
        per owner), else the only one of that name they may see (staff see everyone's)."""
        visible = schedule_selectors.schedule_list_visible(user)
        try:
            by_id = visible.filter(pk=uuid.UUID(reference)).first()
        except ValueError:
            by_id = None
        if by_id is not None:
            return by_id
        named = list(visible.filter(name=reference))
        own = [schedule for schedule in named if schedule.owner_id == user.pk]
        if own:
            return own[0]
        if len(named) == 1:
            return named[0]
        if not named:
            raise CommandError(
                f"No schedule with the id or name {reference!r} that {user.get_username()} may see."
            )
        owners = ", ".join(f"{schedule.pk} (owner {schedule.owner.get_username()})" for schedule in named)
        raise CommandError(f"{len(named)} schedules are named {reference!r}: {owners}. Give its id.")

    def emit(self, data: Any, text: str = "") -> None:
        if self.as_json:
            self.stdout.write(json.dumps(data, default=str, indent=2))
        elif text:
            self.stdout.write(text)


def add_common_options(parser: argparse.ArgumentParser, *, in_subcommand: bool = False) -> None:
    """--user and --json, before the subcommand (as `manage.py jobs` takes them) or after it. A
    subcommand's copy has no default, so that it cannot overwrite a value given before it."""
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if in_subcommand else {}
    parser.add_argument(
        "--user", help="Act as this user (default: LONGRUN_CLI_USER, else the first superuser).", **unset
    )
    parser.add_argument("--json", action="store_true", help="Machine-readable output.", **unset)


def parse_params(text: str) -> Any:
    """The JSON of --params; whether it is an object the type accepts is the service's to say."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--params is not JSON ({exc.msg}); write an object: '{{\"n\": 1000}}'.") from None


def refusal(what: str, exc: JobValidationError) -> CommandError:
    """Each field at fault and why, one a line (Django prints it to stderr and exits 1)."""
    reasons = [f"  {field}: {reason}" for field, messages in exc.errors.items() for reason in messages]
    return CommandError("\n".join([f"{what}:", *reasons]))


def describe(schedule: Schedule) -> str:
    """The expression in words: "At 09:00, Monday through Friday, Europe/Paris"."""
    return recurrence.describe(cron=schedule.cron, interval=schedule.interval, zone_name=schedule.timezone)


def state_of(schedule: Schedule) -> str:
    """enabled, paused (by a person), or disabled (by the system, which says why)."""
    if schedule.enabled:
        return "enabled"
    return "disabled" if schedule.disabled_reason else "paused"


def local_time(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z") if moment else NO_TIME
