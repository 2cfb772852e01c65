"""The only writers of job state, one module per concern.

One function per state change. Each change is a conditional UPDATE (`WHERE status IN (...)`),
so when two happen at once exactly one wins; the loser gets `None` (workers: a lost race is
normal) or a `JobStateError` (users: they asked for something the job can no longer do).
Every change bumps `version`, records a `JobEvent` where it is part of the history, and ends
with `notify.job_changed_on_commit`: published to the live channels after commit, never before.

- `submission`: validate and create jobs (one, idempotent, bulk).
- `execution`: the transitions a worker asks for (claim, progress, log, outcome, heartbeat).
- `control`: the transitions a user asks for (cancel, retry, re-run).
- `maintenance`: the periodic sweep (scheduled jobs, lost dispatches, leases, deadlines).
- `notify`: the one on-commit notifier every transition ends with.
- `webhooks`: webhook delivery state (the outbox rows, attempts, signing secrets).
- `dispatch`: the only module that talks to the Celery broker.
- `common`: the primitives of a state change.

Nothing is re-exported here: callers import the submodule, so each call site says which concern
it touches (`from tasks_app.services import control` -> `control.job_cancel(...)`).
"""
