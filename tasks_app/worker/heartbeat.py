"""The lease heartbeat: a thread beside the running job."""

from __future__ import annotations

import logging
import threading

from django.db import connection

from ..conf import app_settings
from ..services import execution
from .context import JobContext

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the running job's lease every few seconds, from its own thread, so a job busy in
    a long computation or a C call keeps its lease; also tells the job about a cancel request
    and writes progress the job reported and then blocked on."""

    def __init__(self, context: JobContext) -> None:
        super().__init__(name=f"heartbeat-{context.job_id}", daemon=True)
        self.context = context
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = app_settings.HEARTBEAT_SECONDS
        try:
            while not self.stopped.wait(interval):
                try:
                    ours, cancel = execution.job_heartbeat(
                        job_id=self.context.job_id, worker=self.context.worker
                    )
                except Exception:  # a database blip: the lease outlasts a few missed beats
                    logger.warning("heartbeat of job %s failed", self.context.job_id, exc_info=True)
                    connection.close()
                    continue
                if cancel:
                    self.context.note_cancel_requested()
                self.context.flush_progress()
                if not ours:
                    self.context.mark_lease_lost()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
