"""A job's attempts as the job page shows them (a timeline), read from its history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models import JobStatus

# How an attempt ended, by the status of the history entry that ended it.
ATTEMPT_OUTCOMES = {
    JobStatus.SUCCEEDED: "Succeeded",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELLED: "Cancelled",
    JobStatus.SCHEDULED: "Failed, retried",  # a retryable error: another attempt after a backoff
    JobStatus.QUEUED: "Taken back",  # its worker was lost: queued again
}


def job_attempts(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A job's attempts, oldest first, from its history (serialized events, seq order): each
    status change to `running` starts one, the next status change away from it ends it. Each is
    {number, worker, started_at, ended_at, outcome (the ending status, or "running"),
    outcome_label, error ("Type: message" or "")}. `job_detail.js` (attemptsOf) reads the same
    history the same way to keep the timeline live."""
    attempts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
        if event["kind"] not in ("status", "retry"):
            continue
        if event["status"] == JobStatus.RUNNING:
            current = {
                "number": len(attempts) + 1,
                "worker": (event.get("data") or {}).get("worker", ""),
                "started_at": event["created_at"],
                "ended_at": None,
                "outcome": JobStatus.RUNNING,
                "outcome_label": "Running",
                "error": "",
            }
            attempts.append(current)
        elif current is not None:
            error = (event.get("data") or {}).get("error") or {}
            current.update(
                ended_at=event["created_at"],
                outcome=event["status"],
                outcome_label=ATTEMPT_OUTCOMES.get(event["status"], str(event["status"]).capitalize()),
                error=f"{error.get('type', 'Error')}: {error.get('message', '')}" if error else "",
            )
            current = None
    return attempts
