import os
import signal
import sys
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tasks_app import registry, selectors
from tasks_app.stack import MAINTENANCE_QUEUE, WEBHOOK_QUEUE, Stack, free_port


class Command(BaseCommand):
    help = (
        "Run the whole system in the foreground: migrations, an admin login, Redis (started here "
        "unless REDIS_URL is set), a Celery worker, a maintenance worker, Celery beat and Daphne. "
        "Ctrl+C stops everything with a warm shutdown; a second Ctrl+C stops at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=float(os.environ.get("LONGRUN_SHUTDOWN_GRACE", "60")),
            help="Seconds a worker may take to finish running jobs on Ctrl+C.",
        )

    def handle(self, *args: Any, host: str, port: int, shutdown_grace: float, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Longrun is starting.")
        call_command("ensureadmin", stdout=self.stdout)

        # Ctrl+C makes the workers' warm shutdown: each exits as soon as its running jobs have
        # finished. The grace is enforced here (`_stop`): a worker still busy after it gets a cold
        # shutdown, without a soft wait of its own, and its jobs go back to the queue.
        stack = Stack(env={**os.environ, "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0"}, cwd=settings.BASE_DIR)
        stopping = {"asked": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stopping["asked"] += 1
            if stopping["asked"] > 1:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        started = timezone.now()
        try:
            if not os.environ.get("REDIS_URL"):
                redis_port = free_port()
                stack.start_redis(redis_port, settings.VAR_DIR / "redis")
                stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
                self.stdout.write(
                    f"  Redis:       {stack.env['REDIS_URL']} (started here, data in var/redis)"
                )
            # One job worker reads every queue job types name (in production each may have its own).
            stack.start_worker("worker", queues=registry.job_queues(), warm_stop=True)
            stack.start_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo", warm_stop=True)
            # Webhook deliveries wait on the network: threads, not processes, and their own queue.
            stack.start_worker(
                "webhooks", queues=[WEBHOOK_QUEUE], pool="threads", concurrency=8, warm_stop=True
            )
            stack.start_beat(settings.VAR_DIR / "celerybeat-schedule")
            stack.start_daphne(port, host=host)
            self._wait_for_workers(stack, since=started)
            base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            self.stdout.write(self.style.SUCCESS("Longrun is running. Ctrl+C stops it."))
            self.stdout.write(
                f"  Dashboard:   {base}/\n  Admin:       {base}/admin/\n"
                f"  API:         {base}/api/jobs/\n  API docs:    {base}/api/docs/"
            )
            while not stopping["asked"]:
                for child in stack.children:
                    if child.process.poll() is not None:
                        raise CommandError(
                            f"{child.name} exited with code {child.process.returncode}; stopping."
                        )
                time.sleep(0.5)
            self.stdout.write(
                "Stopping: warm shutdown (running jobs may finish; Ctrl+C again to stop at once)."
            )
            self._stop(stack, shutdown_grace)
        except KeyboardInterrupt:
            self.stdout.write("Stopping at once.")
            for child in list(stack.children):
                stack.kill(child)
        except BaseException:
            self._stop(stack, shutdown_grace)
            raise
        self.stdout.write("Stopped.")
        sys.stdout.flush()

    def _wait_for_workers(self, stack: Stack, *, since: datetime, timeout: float = 90.0) -> None:
        """Until every queue has a worker of this run that reported itself ready."""
        deadline = time.monotonic() + timeout
        while True:
            serving = selectors.queue_consumers(registered_since=since)
            required = selectors.required_queues()
            if all(serving.get(queue) for queue in required):
                return
            for child in stack.children:
                if child.process.poll() is not None:
                    raise CommandError(f"{child.name} exited with code {child.process.returncode}; stopping.")
            if time.monotonic() > deadline:
                missing = ", ".join(queue for queue in required if not serving.get(queue))
                raise CommandError(f"No worker reported itself ready for {missing} within {timeout:.0f} s.")
            time.sleep(0.25)

    def _stop(self, stack: Stack, grace: float) -> None:
        by_name = {child.name: child for child in stack.children}
        for name in ("daphne", "beat"):
            if name in by_name:
                stack.stop(by_name[name], timeout=15)
        # The workers' warm shutdowns run side by side, all within the one grace.
        workers = [by_name[name] for name in ("worker", "webhooks", "maintenance") if name in by_name]
        for child in workers:
            if child.process.poll() is None:
                child.process.send_signal(child.stop_signal)
        deadline = time.monotonic() + grace
        for child in workers:
            stack.stop(
                child, timeout=max(deadline - time.monotonic(), 0.0), escalate=signal.SIGQUIT, asked=True
            )
        stack.stop_all()
