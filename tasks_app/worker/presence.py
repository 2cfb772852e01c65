"""A worker's presence (`models.WorkerNode`): registered when Celery says the worker is ready,
renewed by a thread of its main process every LONGRUN_WORKER_HEARTBEAT_SECONDS, marked stopped
when its main process exits (any shutdown Celery performs: warm, soft or cold; a killed worker
writes nothing and is shown lost). `connect()` hooks Celery's `worker_ready` signal (from
`apps.ready`); only a worker's main process receives it."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready
from django.db import connection

from ..conf import MAINTENANCE_QUEUE, app_settings
from ..services import schedules, workers

logger = logging.getLogger(__name__)


class PresenceBeat(threading.Thread):
    def __init__(self, *, name: str, queues: list[str], concurrency: int) -> None:
        super().__init__(name="longrun-presence", daemon=True)
        self.node_name = name
        self.queues = queues
        self.concurrency = concurrency
        self.stopping = threading.Event()

    def register(self) -> None:
        workers.worker_register(
            name=self.node_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
        )

    def run(self) -> None:
        while not self.stopping.wait(app_settings.WORKER_HEARTBEAT_SECONDS):
            try:
                if not workers.worker_seen(name=self.node_name, pid=os.getpid()):
                    self.register()  # the row was dropped, or another process took the name
            except Exception:  # a database restart: the next beat tries again
                logger.warning("worker heartbeat of %s failed", self.node_name, exc_info=True)
                connection.close()


_beat: PresenceBeat | None = None


def connect() -> None:
    worker_ready.connect(on_worker_ready, dispatch_uid="longrun-worker-ready", weak=False)


def on_worker_ready(sender: Any, **kwargs: Any) -> None:
    global _beat
    queues = sorted(sender.app.amqp.queues.consume_from)
    _beat = PresenceBeat(name=sender.hostname, queues=queues, concurrency=int(sender.controller.concurrency))
    try:
        _beat.register()
    except Exception:
        logger.warning("could not register worker %s; its heartbeat will", sender.hostname, exc_info=True)
    try:
        # The schedules declared in code become rows when a sweeping worker starts (a deploy).
        if MAINTENANCE_QUEUE in queues:
            logger.info("schedules declared in code: %s", schedules.schedules_sync())
    except Exception:
        logger.warning("could not sync the schedules declared in code", exc_info=True)
    finally:
        connection.close()  # the main thread keeps none; the beat thread has its own
    _beat.start()
    # Celery sends `worker_shutdown` on a warm shutdown only; the soft shutdown Longrun's
    # workers use ends cold. The interpreter's exit is common to all of them.
    atexit.register(on_main_process_exit, os.getpid())


def on_main_process_exit(main_pid: int) -> None:
    if _beat is None or os.getpid() != main_pid:
        return  # a forked pool process inherits the handler; only the main process is the worker
    _beat.stopping.set()
    try:
        workers.worker_stopped(name=_beat.node_name, pid=main_pid)
    except Exception:
        logger.warning("could not mark worker %s stopped", _beat.node_name, exc_info=True)
    finally:
        connection.close()
