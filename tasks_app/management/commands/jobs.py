"""`manage.py jobs ...`: Longrun at a terminal. Reads go through the selectors and changes through
the services, as the person named by --user (default: LONGRUN_CLI_USER, else the first
superuser), so the history says who did it. Output is for people; --json prints the API's
representation for scripts."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tasks_app import selectors
from tasks_app.exceptions import JobStateError, JobValidationError
from tasks_app.management.cli import acting_user
from tasks_app.models import Job, JobStatus
from tasks_app.serializers import job_representation
from tasks_app.services import control, retention, submission

# Exit codes of `jobs submit --follow`, by final status.
EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 2}
FOLLOW_POLL_SECONDS = 0.25
AGE = re.compile(r"^(\d+)([smhd])$")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Command(BaseCommand):
    help = "List, show, submit (and follow), cancel and retry jobs; list workers; purge old jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user", help="Act as this user (default: LONGRUN_CLI_USER, else the first superuser)."
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")
        commands = parser.add_subparsers(dest="command", required=True, parser_class=type(parser))

        listing = commands.add_parser("list", help="The newest jobs the user may see.")
        listing.add_argument("--status", choices=JobStatus.values)
        listing.add_argument("--type", dest="job_type", default="")
        listing.add_argument("--limit", type=int, default=20)

        show = commands.add_parser("show", help="One job, with its history.")
        show.add_argument("job_id")

        submit = commands.add_parser("submit", help="Submit a job; --follow shows it until it ends.")
        submit.add_argument("job_type")
        submit.add_argument(
            "--param", action="append", default=[], metavar="KEY=VALUE", help="A JSON value, or text."
        )
        submit.add_argument("--priority", type=int)
        submit.add_argument(
            "--follow",
            action="store_true",
            help="Show progress until the end; exit 0 succeeded, 1 failed, 2 cancelled.",
        )

        for name, text in (("cancel", "Cancel a job."), ("retry", "Run a failed or cancelled job again.")):
            changing = commands.add_parser(name, help=text)
            changing.add_argument("job_id")

        commands.add_parser("workers", help="Every worker and its state.")

        purge = commands.add_parser("purge", help="Delete finished jobs older than --older-than.")
        purge.add_argument("--older-than", required=True, help="An age such as 30d, 12h, 90m.")
        purge.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, command: str, **options: Any) -> None:
        self.as_json = bool(options["json"])
        if command == "purge":
            return self.purge(options["older_than"], dry_run=options["dry_run"])
        user = self.user(options["user"])
        if command == "workers":
            return self.workers()
        if command == "list":
            return self.list(user, options["status"] or "", options["job_type"], options["limit"])
        if command == "submit":
            return self.submit(user, options)
        job = self.find(user, options["job_id"])
        if command == "show":
            return self.show(job)
        try:
            if command == "cancel":
                job = control.job_cancel(job_id=job.pk, actor=user)
            else:
                job = control.job_retry(job_id=job.pk, actor=user)
        except JobStateError as exc:
            raise CommandError(exc.message) from None
        self.emit(job_representation(job), f"{job.pk}: {job.status}")

    # --- reads --------------------------------------------------------------------------------

    def list(self, user: Any, status: str, job_type: str, limit: int) -> None:
        jobs = list(selectors.job_list_filtered(user, status=status, job_type=job_type)[:limit])
        if self.as_json:
            return self.emit([job_representation(job) for job in jobs])
        if not jobs:
            self.stdout.write("No jobs.")
        for job in jobs:
            created = timezone.localtime(job.created_at).strftime("%Y-%m-%d %H:%M:%S")
            line = f"{job.pk}  {job.status:<9}  {job.progress:>3}%  {job.type:<16}  {job.owner.get_username():<12}  {created}"
            self.stdout.write(line)

    def show(self, job: Job) -> None:
        data = job_representation(job)
        if self.as_json:
            return self.emit(data)
        for name in ("id", "type", "status", "progress", "attempts", "owner", "created_at", "finished_at"):
            self.stdout.write(f"{name:>12}: {data.get(name) if data.get(name) is not None else '-'}")
        self.stdout.write(f"{'params':>12}: {json.dumps(data['params'])}")
        if data.get("result") is not None:
            self.stdout.write(f"{'result':>12}: {json.dumps(data['result'])}")
        if data.get("error"):
            self.stdout.write(f"{'error':>12}: {data['error']['type']}: {data['error']['message']}")
        self.stdout.write("history:")
        for event in selectors.job_events(job):
            at = timezone.localtime(event.created_at).strftime("%H:%M:%S")
            self.stdout.write(f"  {event.seq:>3}  {at}  {event.message}")

    def workers(self) -> None:
        nodes = selectors.workers_list()
        if self.as_json:
            return self.emit(nodes)
        if not nodes:
            self.stdout.write("No worker has reported itself.")
        for node in nodes:
            seen = timezone.localtime(node["last_seen_at"]).strftime("%H:%M:%S")
            self.stdout.write(
                f"{node['name']:<28} {node['state']:<8} {','.join(node['queues']):<28} "
                f"{len(node['running'])}/{node['concurrency']} running  last seen {seen}"
            )
        unserved = selectors.unserved_queues()
        if unserved:
            self.stderr.write(f"No live worker reads: {', '.join(unserved)}")

    # --- changes ------------------------------------------------------------------------------

    def submit(self, user: Any, options: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"type": options["job_type"], "params": parse_params(options["param"])}
        if options["priority"] is not None:
            fields["priority"] = options["priority"]
        try:
            job = submission.job_create(owner=user, **fields)
        except JobValidationError as exc:
            reasons = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.errors.items())
            raise CommandError(f"Not submitted. {reasons}") from None
        if not options["follow"]:
            return self.emit(job_representation(job), str(job.pk))
        self.stderr.write(f"Submitted {job.pk} ({job.type}); Ctrl+C stops following, not the job.")
        job = self.follow(job)
        self.emit(job_representation(job), self.outcome_line(job))
        sys.exit(EXIT_CODES[JobStatus(job.status)])

    def follow(self, job: Job) -> Job:
        """Redraw one status line until the job ends (the database is the source of truth)."""
        last = ""
        tty = self.stderr.isatty()
        while True:
            job = Job.objects.get(pk=job.pk)
            line = f"{job.status:<9} {progress_bar(job.progress)} {job.progress:>3}%  {job.progress_message}"[
                :110
            ]
            if line != last:
                self.stderr.write(("\r" + line.ljust(110)) if tty else line, ending="" if tty else "\n")
                last = line
            if job.is_terminal:
                if tty:
                    self.stderr.write("")
                return job
            time.sleep(FOLLOW_POLL_SECONDS)

    def outcome_line(self, job: Job) -> str:
        if job.status == JobStatus.SUCCEEDED:
            return f"succeeded: {json.dumps(job.result)}"
        if job.status == JobStatus.FAILED and job.error:
            return f"failed: {job.error.get('type')}: {job.error.get('message')}"
        return str(job.status)

    def purge(self, older_than: str, *, dry_run: bool) -> None:
        before = timezone.now() - parse_age(older_than)
        if dry_run:
            count = retention.jobs_purgeable(before=before)
            return self.emit(
                {"would_delete": count},
                f"{count} finished job(s) ended before {before:%Y-%m-%d %H:%M} would be deleted.",
            )
        purged = retention.jobs_purge(before=before)
        self.emit(
            {"deleted": purged.jobs, "events": purged.events, "deliveries": purged.deliveries},
            f"Deleted {purged.jobs} job(s), {purged.events} history entries, {purged.deliveries} deliveries.",
        )

    # --- helpers ------------------------------------------------------------------------------

    def user(self, username: str | None) -> Any:
        return acting_user(username)

    def find(self, user: Any, job_id: str) -> Job:
        try:
            return selectors.job_get_visible(user, uuid.UUID(job_id))
        except ValueError:
            raise CommandError(f"{job_id!r} is not a job id (a UUID).") from None
        except Job.DoesNotExist:
            raise CommandError(f"No job {job_id} that {user.get_username()} may see.") from None

    def emit(self, data: Any, text: str = "") -> None:
        if self.as_json:
            self.stdout.write(json.dumps(data, default=str, indent=2))
        elif text:
            self.stdout.write(text)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """["n=1000", "label=nightly", 'tags=["a"]'] -> {"n": 1000, "label": "nightly", "tags": ["a"]}."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--param {pair!r}: write it as KEY=VALUE.")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def parse_age(text: str) -> timedelta:
    match = AGE.match(text.strip())
    if not match:
        raise CommandError(f"--older-than {text!r}: write a number and a unit, such as 30d, 12h, 90m or 45s.")
    return timedelta(**{AGE_UNITS[match.group(2)]: int(match.group(1))})


def progress_bar(percent: int, width: int = 30) -> str:
    filled = round(width * max(0, min(100, percent)) / 100)
    return "[" + "#" * filled + "-" * (width - filled) + "]"
