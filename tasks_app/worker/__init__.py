"""The worker side: running one job (`runner`), the context a job's code gets (`context`, the
public API for job authors), the lease heartbeat (`heartbeat`) and sending one webhook delivery
(`webhook_sender`). Celery tasks in `tasks_app.tasks` call into here."""
