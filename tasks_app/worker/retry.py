"""Retrying a worker's database writes across a database restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a worker keeps retrying a database write the job's state depends on (a database
# restart takes seconds); past that the lease lapses and the sweep takes the job back.
DB_RETRY_SECONDS = 30.0


def with_db_retry(write: Callable[[], T], *, seconds: float = DB_RETRY_SECONDS) -> T:
    """Run a database write, reconnecting and retrying while the database is unreachable."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            connection.close()
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("database unavailable; retrying in %.1f s", delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
