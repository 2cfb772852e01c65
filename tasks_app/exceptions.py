"""Domain errors raised by the services (the API maps them to HTTP answers), and the two
exceptions that stop a running job's code."""

from __future__ import annotations


class JobStateError(Exception):
    """The job is not in a state that allows the requested change (HTTP 409)."""

    code = "invalid_state"

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class JobValidationError(Exception):
    """Input the services refuse, with per-field reasons (HTTP 400).

    `errors` maps a dotted field path ("params.seconds") to a list of reasons.
    """

    code = "invalid"

    def __init__(self, errors: dict[str, list[str]], message: str = "Invalid input.") -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


class IdempotencyConflict(Exception):
    """An Idempotency-Key reused with another body (422), or still in flight (409)."""

    code = "idempotency_conflict"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class JobCancelled(Exception):
    """Raised inside job code by `JobContext.raise_if_cancelled()` to stop cooperatively."""


class JobLeaseLost(Exception):
    """Raised inside job code by `JobContext.raise_if_cancelled()` when the sweep took the job
    back from this worker (its heartbeat stopped for too long): its outcome would be dropped."""
