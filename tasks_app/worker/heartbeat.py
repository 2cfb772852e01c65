"""The lease heartbeat: one thread per worker process, beside the job it is running."""

from __future__ import annotations

import logging
import os
import threading

from django.db import connection

from ..conf import app_settings
from ..services import execution
from .context import JobContext

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Looks after the running job from a thread of its own (so a job busy in a long
    computation or a C call is still looked after):

    - renews the job's lease every LONGRUN_HEARTBEAT_SECONDS, and tells the job about a cancel
      request;
    - writes progress the job reported and then blocked on: when it is due (one progress
      interval after the last write), and at every beat.

    One thread serves every job the process runs, one after another (`watch`, `unwatch`): a
    job costs no thread of its own.
    """

    def __init__(self) -> None:
        super().__init__(name="longrun-heartbeat", daemon=True)
        self.wakeup = threading.Event()
        self._lock = threading.Lock()
        self._context: JobContext | None = None
        self._next_beat = 0.0

    def watch(self, context: JobContext) -> None:
        """Look after `context`'s job from now on. The thread is not woken for it (a short job
        then costs it nothing): it looks at least every beat, and a held-back report wakes it."""
        with self._lock:
            self._context = context
            self._next_beat = context.clock() + app_settings.HEARTBEAT_SECONDS
            context.wakeup = self.wakeup

    def unwatch(self, context: JobContext) -> None:
        """The job has ended (or was taken back): stop looking after it."""
        with self._lock:
            if self._context is context:
                self._context = None
                context.wakeup = None

    def run(self) -> None:
        idle = False
        while True:
            with self._lock:
                context, next_beat = self._context, self._next_beat
            if context is None:
                if not idle:
                    connection.close()  # nothing to look after: hold no database connection
                idle = True
                self.wakeup.wait(app_settings.HEARTBEAT_SECONDS)
                self.wakeup.clear()
                continue
            idle = False
            due = context.progress_due_at()
            until = next_beat if due is None else min(next_beat, due)
            self.wakeup.wait(max(0.0, until - context.clock()))
            self.wakeup.clear()
            with self._lock:
                if self._context is not context:
                    continue  # that job has ended meanwhile
            now = context.clock()
            if now >= next_beat:
                with self._lock:
                    self._next_beat = now + app_settings.HEARTBEAT_SECONDS
                if not self._beat(context):
                    self.unwatch(context)
            elif due is not None and now >= due:
                context.flush_progress_if_due()

    def _beat(self, context: JobContext) -> bool:
        """Renew the lease; False once the job is no longer this worker's."""
        try:
            ours, cancel = execution.job_heartbeat(job_id=context.job_id, worker=context.worker)
        except Exception:  # a database blip: the lease outlasts a few missed beats
            logger.warning("heartbeat of job %s failed", context.job_id, exc_info=True)
            connection.close()
            return True
        if cancel:
            context.note_cancel_requested()
        context.flush_progress()
        if not ours:
            context.mark_lease_lost()
            return False
        return True


_heartbeat: Heartbeat | None = None
_heartbeat_pid = 0


def heartbeat() -> Heartbeat:
    """This process's heartbeat thread, started on first use (and again in a forked child)."""
    global _heartbeat, _heartbeat_pid
    if _heartbeat is None or _heartbeat_pid != os.getpid():
        _heartbeat = Heartbeat()
        _heartbeat.start()
        _heartbeat_pid = os.getpid()
    return _heartbeat
