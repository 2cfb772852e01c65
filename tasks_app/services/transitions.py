"""Running one state change: the conditional UPDATE and its history entry (`common.update_if`),
then the notifier (`notify.job_changed_on_commit`), in as few round trips as the database allows.

On PostgreSQL, outside a caller's transaction, a change whose job has no `callback_url` is one
autocommitted statement: nothing else has to be written with it (a webhook delivery is the only
other row a change can write, and only for jobs with a callback), so it needs no BEGIN or COMMIT,
and its live message is published as soon as it returns. Any other change (a job with a
callback, another database, a caller's transaction) runs inside a transaction with its outbox
row, published after commit.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, transaction

from ..models import Job, JobId
from . import notify
from .common import Note, Where, update_if


def change_job(
    job_id: JobId, where: Where, *, event: str, note: Note | None = None, **changes: Any
) -> Job | None:
    """Apply `changes` if the job matches `where` (bumping its version, recording `note`) and
    notify; None if the condition did not hold. `event` names the change for live clients:
    status, progress, log or cancel_requested."""
    connection = connections[Job.objects.db]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        changed = update_if(job_id, {**where, "callback_url": ""}, note=note, **changes)
        if changed is not None:
            notify.job_changed_on_commit(changed.job, event, changed.entry)  # committed: sent now
            return changed.job
        # Lost a race, or the job has a callback: the transaction below decides.
    with transaction.atomic(savepoint=False):
        changed = update_if(job_id, where, note=note, **changes)
        if changed is None:
            return None
        notify.job_changed_on_commit(changed.job, event, changed.entry)
        return changed.job
