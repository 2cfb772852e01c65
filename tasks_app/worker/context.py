"""`JobContext`: what a job's code can do while it runs. The public API for job authors.

A job type receives one as its first argument::

    @job_type("export", description="...", params_schema={...})
    def export(ctx: JobContext, *, table: str) -> dict:
        for i, chunk in enumerate(chunks):
            ctx.raise_if_cancelled()        # stop cleanly when someone cancelled the job
            ...
            ctx.progress(100 * i / n, f"chunk {i} of {n}")   # throttled; the latest value lands
        ctx.log("exported")                 # a line in the job's history
        return {"rows": n}                  # JSON: becomes the result

No database transaction is held while the job's code runs; each progress write and log line is
its own short transaction through the services.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.db import InterfaceError, OperationalError, connection

from .. import selectors
from ..conf import app_settings
from ..exceptions import JobCancelled, JobLeaseLost
from ..models import Job
from ..services import execution
from .retry import with_db_retry


class JobContext:
    """What a job's code can do: report progress, write log lines, see a cancel request."""

    # How often `cancel_requested` asks the database at most.
    CANCEL_CHECK_INTERVAL = 0.5

    def __init__(self, job: Job, *, worker: str) -> None:
        self.job_id = job.pk
        #: 1 on the first attempt, 2 on the first retry...
        self.attempt: int = job.attempts
        self.params: dict[str, Any] = job.params
        self.worker = worker
        #: Set when the job is no longer this worker's to run (the sweep took it back).
        self.lease_lost = False
        self._progress_interval: float = app_settings.PROGRESS_INTERVAL
        # The claim has just written the job and read its cancel request: the first progress write
        # and the first cancel check are due an interval from now. A short job then costs no
        # progress write at all (its last report lands with its outcome) and no extra read.
        started = time.monotonic()
        self._last_progress_write = started
        self._pending_progress: tuple[int, str] | None = None
        self._pending_lock = threading.Lock()  # the job's thread and the heartbeat both touch it
        self._progress_lock = threading.Lock()  # one progress write at a time, in order
        self._last_cancel_check = started
        self._cancel_requested = job.cancel_requested_at is not None
        # Set by the heartbeat, so a held-back report wakes it to write the report when due.
        self.wakeup: threading.Event | None = None

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100). Writes are throttled to one per LONGRUN_PROGRESS_INTERVAL; the
        latest value always lands (at the next write, the heartbeat, a log line, or the outcome)."""
        with self._pending_lock:
            self._pending_progress = (max(0, min(100, int(percent))), message)
        if time.monotonic() - self._last_progress_write >= self._progress_interval:
            self.flush_progress()
        elif self.wakeup is not None:
            self.wakeup.set()  # the heartbeat writes it when due, even if the code blocks now

    def log(self, message: str) -> None:
        """Append a line to the job's history (its events)."""
        self.flush_progress()
        with_db_retry(lambda: execution.job_log(job_id=self.job_id, worker=self.worker, message=str(message)))

    @property
    def cancel_requested(self) -> bool:
        """True once somebody asked to cancel this job; the code should stop soon after."""
        now = time.monotonic()
        if not self._cancel_requested and now - self._last_cancel_check >= self.CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            try:
                self._cancel_requested = selectors.job_cancel_requested(self.job_id)
            except (OperationalError, InterfaceError):
                connection.close()  # ask again at the next check
        return self._cancel_requested

    def raise_if_cancelled(self) -> None:
        """Stop here (cleanly) if a cancel was requested, or if the job is no longer this
        worker's to run (its lease was lost)."""
        if self.lease_lost:
            raise JobLeaseLost()
        if self.cancel_requested:
            raise JobCancelled()

    # --- for the runner and the heartbeat, not for job code -----------------------------------

    def flush_progress(self) -> None:
        """Write the pending progress, if any. Also called by the heartbeat thread, so a job that
        reports 50% and then blocks still shows 50%; the lock keeps the two writers in order."""
        with self._progress_lock:
            pending = self._take_pending()
            if pending is not None:
                self._write_progress(*pending)

    def flush_progress_if_due(self) -> None:
        """Write the pending progress if an interval has passed since the last write (the
        heartbeat's way: the job's own thread may have written meanwhile)."""
        with self._progress_lock:
            if self.clock() < self._last_progress_write + self._progress_interval:
                return
            pending = self._take_pending()
            if pending is not None:
                self._write_progress(*pending)

    def clock(self) -> float:
        """The monotonic clock progress is throttled by (the heartbeat schedules on it too)."""
        return time.monotonic()

    def progress_due_at(self) -> float | None:
        """When the held-back report may be written (on `clock()`), or None."""
        if self._pending_progress is None:
            return None
        return self._last_progress_write + self._progress_interval

    def discard_pending_progress(self) -> None:
        """The job failed: a progress value it reported last is not worth writing."""
        self._take_pending()

    def take_pending_progress(self) -> tuple[int, str] | None:
        """The progress reported but not yet written, now the job's outcome will carry it (after
        any write in flight, so the outcome is the last word)."""
        with self._progress_lock:
            return self._take_pending()

    def _take_pending(self) -> tuple[int, str] | None:
        with self._pending_lock:
            pending, self._pending_progress = self._pending_progress, None
        return pending

    def note_cancel_requested(self) -> None:
        self._cancel_requested = True

    def mark_lease_lost(self) -> None:
        self.lease_lost = True

    def _write_progress(self, percent: int, message: str) -> None:
        self._last_progress_write = time.monotonic()
        try:
            execution.job_progress(job_id=self.job_id, worker=self.worker, percent=percent, message=message)
        except (OperationalError, InterfaceError):
            # Progress is not worth failing a job over: keep it for the next write.
            connection.close()
            with self._pending_lock:
                if self._pending_progress is None:
                    self._pending_progress = (percent, message)
