"""`make soak`: a chaos soak of the whole system under a mixed load, then invariant checks.

    .venv/bin/python bench/soak.py                     # 20 minutes of load, a fault every 25-45 s
    .venv/bin/python bench/soak.py --quick             # CI: ~3 minutes, every fault kind at least once
    .venv/bin/python bench/soak.py --minutes 8 --seed 1234 --keep
    .venv/bin/python bench/soak.py --quick --faults sigkill_worker,postgres_restart
    make soak SOAK_ARGS="--quick --seed 1234"          # the same through make

It starts everything it uses and touches nothing else on the machine: its own PostgreSQL
cluster (initdb into a temporary directory, with the highest /usr/lib/postgresql/*/bin; as root
through `runuser -u postgres`), its own Redis, two job workers (prefork, 2 processes each), the
maintenance worker with Celery beat, the webhook worker and Daphne, all started as
`tasks_app/stack.py` starts them, and a webhook receiver in this process. Clients submit a
mixed load through the REST API (short, long, progress-heavy, flaky and always-failing jobs
from `bench/soak_job_types.py`, single and bulk, some with webhooks, some cancelled, some
failed ones retried) while a fault injector, on a schedule drawn from the seed, kills pool
processes and workers, stops workers with SIGTERM, restarts Redis (keeping or losing its data)
and restarts PostgreSQL. After each fault a probe job measures the time until a new job
succeeds again.

When the load stops the soak waits for every job to end (the drain), then checks, against the
database, the job code's completion log and the webhook receiver: no accepted job lost or
stuck, every final status the one that matches what happened, no attempt completed twice, every
job's history consistent, every webhook delivery settled and received. It prints one report
and exits non-zero if any check fails (the temporary directory, with every process's log, the
completion log, what the clients did (load.json) and the report, is then kept, as with
`--keep`). The seed is printed at the start and the end: run again with `--seed` to replay the
same fault schedule and load mix (the timing of a real system still varies).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import http.server
import itertools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE, Child, Stack, free_port  # noqa: E402

T = TypeVar("T")

FAULT_KINDS = (
    "sigkill_pool",
    "sigkill_worker",
    "sigterm_worker",
    "redis_restart_persistent",
    "redis_restart_lost",
    "postgres_restart",
)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JOB_TYPES = ("soak-short", "soak-long", "soak-chatty", "soak-flaky", "soak-fail")

# The children's tuning: leases, sweeps and graces short enough that recovery takes tens of
# seconds, not minutes. Printed at the start.
TUNING = {
    "LONGRUN_LEASE_SECONDS": "12",
    "LONGRUN_HEARTBEAT_SECONDS": "2",
    "LONGRUN_SWEEP_INTERVAL": "2",
    "LONGRUN_DISPATCH_GRACE": "5",
    "LONGRUN_CANCEL_GRACE": "5",
    "LONGRUN_TIMEOUT_GRACE": "5",
    "LONGRUN_RETRY_BACKOFF_BASE": "0.5",
    "LONGRUN_RETRY_BACKOFF_MAX": "5",
    "LONGRUN_WEBHOOK_TIMEOUT": "5",
    "LONGRUN_WEBHOOK_RETRY_SCHEDULE": "1,2,4,8,15",
    "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "5",
}
# Being added to the system: a queued job whose broker message was lost is published again
# after this many seconds once the queue is seen empty. Set only when the settings know it.
REDISPATCH_SETTING = "LONGRUN_REDISPATCH_AFTER"
REDISPATCH_SECONDS = "20"

CLAIM_ATTEMPT = re.compile(r"\(attempt (\d+) of \d+\)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def db_call(func: Callable[[], T], *, patience: float = 180.0) -> T:
    """Run an ORM read or write, reconnecting while PostgreSQL is restarting."""
    from django.db import InterfaceError, OperationalError, connection

    deadline = time.monotonic() + patience
    while True:
        try:
            return func()
        except (OperationalError, InterfaceError):
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --- how long, how much ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    load_seconds: float
    single_clients: int
    single_rate: float  # single submissions per second, all single clients together
    bulk_every: tuple[float, float]
    bulk_size: tuple[int, int]
    long_every: tuple[float, float]
    long_seconds: tuple[float, float]
    fault_every: tuple[float, float]
    first_fault: tuple[float, float]
    drain_seconds: float
    # Submitting pauses while more jobs than this, created in the last minutes, are unfinished.
    backlog_limit: int = 250


def make_profile(minutes: float | None, quick: bool) -> Profile:
    if quick:
        return Profile(
            name="quick",
            load_seconds=60 * (minutes or 3),
            single_clients=2,
            single_rate=2.0,
            bulk_every=(8, 14),
            bulk_size=(10, 30),
            long_every=(7, 13),
            long_seconds=(3, 20),
            fault_every=(13, 19),
            first_fault=(6, 10),
            drain_seconds=150,
        )
    return Profile(
        name="full",
        load_seconds=60 * (minutes or 20),
        single_clients=3,
        single_rate=3.0,
        bulk_every=(8, 16),
        bulk_size=(20, 60),
        long_every=(8, 16),
        long_seconds=(3, 30),
        fault_every=(25, 45),
        first_fault=(15, 25),
        drain_seconds=300,
    )


def fault_schedule(
    rng: random.Random, profile: Profile, kinds: tuple[str, ...] = FAULT_KINDS
) -> list[tuple[float, str]]:
    """(seconds after the load starts, kind): every kind once in a shuffled first round, then
    drawn at random; none in the last stretch, so its probe can still run under load."""
    first_round = list(kinds)
    rng.shuffle(first_round)
    schedule: list[tuple[float, str]] = []
    at = rng.uniform(*profile.first_fault)
    while at < profile.load_seconds - profile.fault_every[0] / 2:
        kind = first_round[len(schedule)] if len(schedule) < len(first_round) else rng.choice(kinds)
        schedule.append((at, kind))
        at += rng.uniform(*profile.fault_every)
    return schedule


# --- PostgreSQL, a cluster of our own -------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The bin directory of the highest PostgreSQL version installed (Debian's layout)."""

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    found = sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")), key=version)
    if not found:
        raise SystemExit(
            "soak: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl, postgres); "
            "install the postgresql package."
        )
    return found[-1]


class Postgres:
    """A throwaway cluster: initdb into `root/pgdata`, trust auth, 127.0.0.1 on a free port,
    fsync on. PostgreSQL refuses to run as root, so as root it runs as the postgres user."""

    def __init__(self, root: Path, log_file: Path, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.data = root / "pgdata"
        self.log_file = log_file
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            if shutil.which("runuser") is None:
                raise SystemExit("soak: running as root needs runuser to start PostgreSQL as postgres")
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise SystemExit("soak: running as root needs a 'postgres' user to run PostgreSQL") from None

    def _run(self, *argv: str, timeout: float = 120) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            cwd=self.data.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _chown(self, path: Path) -> None:
        if self.as_postgres:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def init(self) -> None:
        self.data.mkdir(mode=0o700)
        self._chown(self.data)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._chown(self.log_file)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# bench/soak.py\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\nfsync = on\nmax_connections = 200\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')


# --- the processes ----------------------------------------------------------------------------------


class Services:
    """Redis, the workers, beat and Daphne, started as `tasks_app/stack.py` starts them. A
    watchdog notices processes that exit without a fault having stopped them, records it and
    starts another."""

    def __init__(self, env: dict[str, str], root: Path, log_dir: Path) -> None:
        self.stack = Stack(env=env, cwd=ROOT, log_dir=log_dir)
        self.log_dir = log_dir
        self.redis_port = free_port()
        self.redis_dir = root / "redis"
        self.daphne_port = free_port()
        self.beat_schedule = root / "celerybeat-schedule"
        self.redis: Child | None = None
        self.workers: list[Child] = []
        self.others: dict[str, Child] = {}
        self._generation = itertools.count(1)
        # Held while a fault or the watchdog changes the set of processes.
        self.lock = threading.RLock()
        self.unexpected: list[str] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.daphne_port}"

    def start_redis(self) -> None:
        self.redis = self.stack.start_redis(self.redis_port, self.redis_dir, persistent=True)

    def stop_redis(self, *, lose_data: bool) -> None:
        assert self.redis is not None
        self.stack.stop(self.redis, timeout=15)
        self.redis = None
        if lose_data:
            for path in self.redis_dir.iterdir():
                if path.name == "redis.log":
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def _log_size(self, name: str) -> int:
        log_file = self.log_dir / f"{name}.log"
        return log_file.stat().st_size if log_file.exists() else 0

    def _wait_ready(self, child: Child, offset: int, timeout: float = 120.0) -> None:
        """Until the worker logs " ready." after `offset` (its log is appended to on a restart)."""
        log_file = self.log_dir / f"{child.name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{tail}")
            if log_file.exists() and b" ready." in log_file.read_bytes()[offset:]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{child.name} not ready after {timeout:.0f} s")

    def start_job_worker(self) -> Child:
        name = f"worker-{next(self._generation)}"
        child = self.stack.start_worker(name, queues=[JOB_QUEUE], concurrency=2)
        self._wait_ready(child, 0)
        self.workers.append(child)
        return child

    def _start_other(self, name: str) -> Child:
        offset = self._log_size(name)
        if name == "maintenance":
            child = self.stack.start_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
            self._wait_ready(child, offset)
        elif name == "webhooks":
            child = self.stack.start_worker("webhooks", queues=[WEBHOOK_QUEUE], pool="threads", concurrency=8)
            self._wait_ready(child, offset)
        elif name == "beat":
            child = self.stack.start_beat(self.beat_schedule)
        elif name == "daphne":
            child = self.stack.start_daphne(self.daphne_port)
        else:
            raise ValueError(name)
        self.others[name] = child
        return child

    def start_all(self) -> None:
        for _ in range(2):
            self.start_job_worker()
        for name in ("maintenance", "webhooks", "beat", "daphne"):
            self._start_other(name)

    def forget_worker(self, child: Child) -> None:
        if child in self.workers:
            self.workers.remove(child)

    def watchdog_round(self) -> None:
        with self.lock:
            for child in list(self.workers):
                if child.process.poll() is not None:
                    self._note_exit(child)
                    self.forget_worker(child)
                    self.stack.stop(child, timeout=1)
                    self.start_job_worker()
            for name, child in list(self.others.items()):
                if child.process.poll() is not None:
                    self._note_exit(child)
                    self.stack.stop(child, timeout=1)
                    self._start_other(name)
            if self.redis is not None and self.redis.process.poll() is not None:
                self._note_exit(self.redis)
                self.stack.stop(self.redis, timeout=1)
                self.start_redis()

    def _note_exit(self, child: Child) -> None:
        log_file = self.log_dir / f"{child.name}.log"
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:] if log_file.exists() else []
        message = f"{child.name} (pid {child.process.pid}) exited by itself with {child.process.returncode}"
        self.unexpected.append(message + "".join(f"\n      {line[:200]}" for line in tail))
        log(f"UNEXPECTED: {message}; starting another")

    def shutdown(self) -> None:
        with self.lock:
            for name in ("daphne", "beat", "maintenance", "webhooks"):
                if name in self.others:
                    self.stack.stop(self.others.pop(name), timeout=15)
            for child in list(self.workers):
                self.stack.stop(child, timeout=15)
            self.workers.clear()
            self.stack.stop_all(timeout=15)
            self.redis = None


# --- the webhook receiver -----------------------------------------------------------------------------


class _ReceiverServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = cast(_ReceiverServer, self.server).receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code = receiver.receive(self.headers.get("webhook-id") or "", body)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet


class Receiver:
    """Records every webhook it accepts as (webhook id, event type, job id); answers 500 to a
    seeded share of first attempts so retries are exercised. Signatures are not checked."""

    def __init__(self, seed: int, refuse_share: float = 0.05) -> None:
        self.rng = random.Random(f"{seed}:receiver")
        self.refuse_share = refuse_share
        self.lock = threading.Lock()
        self.received: dict[str, tuple[str, str]] = {}
        self.seen: set[str] = set()
        self.requests = 0
        self.refused = 0
        self.duplicates = 0
        self.server = _ReceiverServer(("127.0.0.1", 0), _ReceiverHandler)
        self.server.receiver = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/soak"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def receive(self, webhook_id: str, body: bytes) -> int:
        try:
            payload = json.loads(body)
            event, job_id = str(payload["type"]), str(payload["data"]["id"])
        except (ValueError, KeyError, TypeError):
            event, job_id = "?", "?"
        with self.lock:
            self.requests += 1
            first = webhook_id not in self.seen
            self.seen.add(webhook_id)
            if first and self.rng.random() < self.refuse_share:
                self.refused += 1
                return 500
            if webhook_id in self.received:
                self.duplicates += 1
            self.received[webhook_id] = (event, job_id)
        return 200


# --- what the load did ------------------------------------------------------------------------------


@dataclass
class Submission:
    job_id: str
    type: str
    ref: str
    source: str  # single, bulk, long, probe
    callback: bool


@dataclass
class Ledger:
    """Everything the clients did and were told, for the checks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, Submission] = field(default_factory=dict)
    # job id -> accepted (200), refused (409), ambiguous (an earlier try may have landed), error
    cancels: dict[str, str] = field(default_factory=dict)
    retries: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # why a request had to be repeated
    api_errors: list[str] = field(default_factory=list)

    def accept(self, submission: Submission) -> None:
        with self.lock:
            self.jobs[submission.job_id] = submission

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def failed_try(self, what: str, reason: str) -> None:
        with self.lock:
            self.failures[f"{what}: {reason}"] += 1

    def api_error(self, message: str) -> None:
        with self.lock:
            self.api_errors.append(message)
        log(f"API error: {message}")


class Api:
    """The REST API with the soak user's token; one HTTP session per thread."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Token {token}"}
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return cast(requests.Session, session)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
        return self._session().post(
            self.base + path, json=body, headers={**self.headers, **(headers or {})}, timeout=(3, 30)
        )

    def get(self, path: str, params: dict[str, Any] | None = None) -> requests.Response:
        return self._session().get(self.base + path, params=params, headers=self.headers, timeout=(3, 30))


class Load:
    """The clients: single submissions, bulk submissions, long jobs, cancels and retries, with
    a pause while too many recent jobs are unfinished (so a slow machine drains in time)."""

    def __init__(
        self, api: Api, ledger: Ledger, profile: Profile, seed: int, run_id: str, callback_url: str
    ) -> None:
        self.api = api
        self.ledger = ledger
        self.profile = profile
        self.seed = seed
        self.run_id = run_id
        self.callback_url = callback_url
        self.stop = threading.Event()
        self.give_up_at = float("inf")  # submissions keep retrying until then
        self.backlog = 0
        self._cancel_lock = threading.Lock()
        self._cancel_queue: list[tuple[float, str]] = []
        self.threads: list[threading.Thread] = []

    # -- bodies --

    def body(self, rng: random.Random, type_: str, *, long_seconds: float | None = None) -> dict[str, Any]:
        if type_ == "soak-short":
            params: dict[str, Any] = {"seconds": round(rng.uniform(0, 0.3), 3)}
        elif type_ == "soak-long":
            params = {"seconds": round(long_seconds or rng.uniform(*self.profile.long_seconds), 1)}
        elif type_ == "soak-chatty":
            params = {"calls": rng.randint(1000, 5000), "spread": round(rng.uniform(0.1, 1.0), 2)}
        elif type_ == "soak-flaky":
            params = {"failures": 1}
        else:
            params = {"delay": round(rng.uniform(0, 0.2), 3)}
        body: dict[str, Any] = {
            "type": type_,
            "params": params,
            "priority": rng.randint(3, 7),
            "metadata": {"soak": self.run_id, "ref": uuid.uuid4().hex},
        }
        if rng.random() < 0.2:
            body["callback_url"] = self.callback_url
            events = rng.choice([[], [], ["job.started"], ["job.started", "job.progress"]])
            if events:
                body["webhook_events"] = events
        return body

    @staticmethod
    def pick_type(rng: random.Random) -> str:
        return rng.choices(
            ["soak-short", "soak-chatty", "soak-flaky", "soak-fail"], weights=[50, 22, 16, 12], k=1
        )[0]

    # -- submitting --

    def submit(self, body: dict[str, Any], source: str, *, give_up_at: float | None = None) -> str | None:
        """POST /api/jobs/ with an Idempotency-Key, repeated with the same key until accepted."""
        key = f"soak-{uuid.uuid4().hex}"
        deadline = self.give_up_at if give_up_at is None else give_up_at
        tries, delay = 0, 0.2
        while time.monotonic() < deadline:
            tries += 1
            try:
                response = self.api.post("/api/jobs/", body, {"Idempotency-Key": key})
            except requests.RequestException as exc:
                reason = type(exc).__name__
            else:
                if response.status_code == 202:
                    job = response.json()
                    self.ledger.accept(
                        Submission(
                            job["id"], body["type"], body["metadata"]["ref"], source, "callback_url" in body
                        )
                    )
                    self.ledger.count(f"submitted via {source}")
                    if tries > 1:
                        self.ledger.count("submissions repeated after a failure")
                    if response.headers.get("Idempotent-Replayed") == "true":
                        self.ledger.count("submissions replayed (Idempotent-Replayed)")
                    return str(job["id"])
                if response.status_code < 500 and response.status_code not in (409, 429):
                    self.ledger.api_error(f"POST /api/jobs/ -> {response.status_code}: {response.text[:300]}")
                    return None
                reason = str(response.status_code)
            self.ledger.failed_try("POST /api/jobs/", reason)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.ledger.count("submissions abandoned")
        return None

    def submit_bulk(self, bodies: list[dict[str, Any]]) -> list[str]:
        """POST /api/jobs/bulk/ (all or nothing, no idempotency key): after an answer that leaves
        it unclear, look the jobs up by their `ref` before sending it again."""
        from tasks_app.models import Job

        refs = [b["metadata"]["ref"] for b in bodies]
        by_ref = {b["metadata"]["ref"]: b for b in bodies}
        tries, delay = 0, 0.2
        while time.monotonic() < self.give_up_at:
            tries += 1
            try:
                response = self.api.post("/api/jobs/bulk/", {"jobs": bodies})
            except requests.RequestException as exc:
                reason = type(exc).__name__
            else:
                if response.status_code == 202:
                    created = [(str(j["id"]), str(j["metadata"]["ref"])) for j in response.json()["jobs"]]
                    return self._accept_bulk(created, by_ref, tries, adopted=False)
                if response.status_code < 500 and response.status_code != 429:
                    self.ledger.api_error(
                        f"POST /api/jobs/bulk/ -> {response.status_code}: {response.text[:300]}"
                    )
                    return []
                reason = str(response.status_code)
            self.ledger.failed_try("POST /api/jobs/bulk/", reason)
            found = db_call(
                lambda: [
                    (str(pk), str(meta["ref"]))
                    for pk, meta in Job.objects.filter(metadata__ref__in=refs).values_list("id", "metadata")
                ]
            )
            if found:
                if len(found) != len(refs):
                    self.ledger.api_error(
                        f"bulk request half-written: {len(found)} of {len(refs)} jobs exist"
                    )
                return self._accept_bulk(found, by_ref, tries, adopted=True)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.ledger.count("bulk requests abandoned")
        return []

    def _accept_bulk(
        self, created: list[tuple[str, str]], by_ref: dict[str, dict[str, Any]], tries: int, *, adopted: bool
    ) -> list[str]:
        for job_id, ref in created:
            body = by_ref[ref]
            self.ledger.accept(Submission(job_id, body["type"], ref, "bulk", "callback_url" in body))
        self.ledger.count("submitted via bulk", len(created))
        self.ledger.count("bulk requests")
        if tries > 1:
            self.ledger.count("bulk requests repeated after a failure")
        if adopted:
            self.ledger.count("bulk requests found written after an unclear answer")
        return [job_id for job_id, _ in created]

    # -- cancels and retries --

    def maybe_cancel(self, rng: random.Random, job_id: str, share: float, within: float) -> None:
        if rng.random() < share:
            with self._cancel_lock:
                heapq.heappush(self._cancel_queue, (time.monotonic() + rng.uniform(0, within), job_id))

    def cancel(self, job_id: str) -> None:
        self.ledger_outcome(self.ledger.cancels, job_id, self._act("cancel", job_id, accepted=200))

    def retry(self, job_id: str) -> None:
        self.ledger_outcome(self.ledger.retries, job_id, self._act("retry", job_id, accepted=202))

    def ledger_outcome(self, book: dict[str, str], job_id: str, outcome: str) -> None:
        with self.ledger.lock:
            book[job_id] = outcome

    def _act(self, action: str, job_id: str, *, accepted: int) -> str:
        """POST /api/jobs/{id}/{action}/ until a clear answer: accepted, refused (409), or
        ambiguous (a 409 after an unclear try, which may have been the one that worked)."""
        unclear = False
        for _ in range(30):
            try:
                response = self.api.post(f"/api/jobs/{job_id}/{action}/")
            except requests.RequestException as exc:
                unclear = True
                self.ledger.failed_try(f"POST {action}", type(exc).__name__)
                time.sleep(1)
                continue
            if response.status_code == accepted:
                return "accepted"
            if response.status_code == 409:
                return "ambiguous" if unclear else "refused"
            if response.status_code >= 500 or response.status_code == 429:
                unclear = True
                self.ledger.failed_try(f"POST {action}", str(response.status_code))
                time.sleep(1)
                continue
            self.ledger.api_error(f"POST {action} {job_id} -> {response.status_code}: {response.text[:300]}")
            return "error"
        return "ambiguous"

    # -- the threads --

    def _pause_while_backlogged(self) -> None:
        while self.backlog > self.profile.backlog_limit and not self.stop.is_set():
            time.sleep(0.5)

    def _single_client(self, n: int) -> None:
        rng = random.Random(f"{self.seed}:single:{n}")
        rate = self.profile.single_rate / self.profile.single_clients
        while not self.stop.is_set():
            self._pause_while_backlogged()
            started = time.monotonic()
            type_ = self.pick_type(rng)
            job_id = self.submit(self.body(rng, type_), "single")
            if job_id is not None:
                self.maybe_cancel(rng, job_id, 0.05, 5.0)
            self.stop.wait(max(0.0, rng.expovariate(rate) - (time.monotonic() - started)))

    def _bulk_client(self) -> None:
        rng = random.Random(f"{self.seed}:bulk")
        while not self.stop.wait(rng.uniform(*self.profile.bulk_every)):
            self._pause_while_backlogged()
            size = rng.randint(*self.profile.bulk_size)
            for job_id in self.submit_bulk([self.body(rng, self.pick_type(rng)) for _ in range(size)]):
                self.maybe_cancel(rng, job_id, 0.04, 10.0)

    def _long_client(self) -> None:
        rng = random.Random(f"{self.seed}:long")
        while not self.stop.wait(rng.uniform(*self.profile.long_every)):
            seconds = rng.uniform(*self.profile.long_seconds)
            job_id = self.submit(self.body(rng, "soak-long", long_seconds=seconds), "long")
            if job_id is not None:
                self.maybe_cancel(rng, job_id, 0.15, seconds + 3)

    def _canceller(self) -> None:
        while not self.stop.is_set():
            due: str | None = None
            with self._cancel_lock:
                if self._cancel_queue and self._cancel_queue[0][0] <= time.monotonic():
                    due = heapq.heappop(self._cancel_queue)[1]
            if due is None:
                self.stop.wait(0.1)
            else:
                self.cancel(due)

    def _retrier(self) -> None:
        rng = random.Random(f"{self.seed}:retry")
        while not self.stop.wait(rng.uniform(6, 12)):
            try:
                response = self.api.get("/api/jobs/", {"status": "failed", "page_size": 100})
            except requests.RequestException:
                continue
            if response.status_code != 200:
                continue
            with self.ledger.lock:
                touched = set(self.ledger.retries) | set(self.ledger.cancels)
                probes = {s.job_id for s in self.ledger.jobs.values() if s.source == "probe"}
            for job in response.json()["results"]:
                job_id = str(job["id"])
                if job_id in touched or job_id in probes or rng.random() > 0.35:
                    continue
                self.retry(job_id)
                if self.stop.is_set():
                    break

    def _backlog_monitor(self) -> None:
        from datetime import timedelta

        from tasks_app.models import Job

        def recent_unfinished() -> int:
            since = now_utc() - timedelta(minutes=2)
            return Job.objects.filter(created_at__gte=since).exclude(status__in=TERMINAL).count()

        while not self.stop.is_set():
            try:
                self.backlog = db_call(recent_unfinished, patience=5)
            except Exception:
                pass  # the database is restarting: keep the last figure
            self.stop.wait(2)

    def start(self, load_seconds: float) -> None:
        self.give_up_at = time.monotonic() + load_seconds + 90
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"single-{n}", functools.partial(self._single_client, n))
            for n in range(self.profile.single_clients)
        ]
        targets += [
            ("bulk", self._bulk_client),
            ("long", self._long_client),
            ("canceller", self._canceller),
            ("retrier", self._retrier),
            ("backlog", self._backlog_monitor),
        ]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


# --- faults -----------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    offset: float  # seconds after the load started
    at: datetime
    detail: str = ""
    probe_id: str | None = None
    recovery: float | None = None
    outcome: str = "pending"  # the probe's: recovered, or why not
    # The jobs the fault hit (job id -> the worker that ran them) and when all of them were
    # running elsewhere or had ended.
    hit: dict[str, str] = field(default_factory=dict)
    hit_back: float | None = None


class Injector:
    """Injects the scheduled faults, each followed by a probe job whose time to succeed is the
    fault's recovery time."""

    def __init__(
        self,
        services: Services,
        postgres: Postgres,
        load: Load,
        seed: int,
        schedule: list[tuple[float, str]],
        soft_shutdown: float,
    ) -> None:
        self.services = services
        self.postgres = postgres
        self.load = load
        self.rng = random.Random(f"{seed}:faults")
        self.schedule = schedule
        self.soft_shutdown = soft_shutdown
        self.faults: list[Fault] = []
        self.probes: list[threading.Thread] = []
        self.probe_deadline = float("inf")

    def run(self, started: float, stop: threading.Event) -> None:
        for offset, kind in self.schedule:
            if stop.wait(max(0.0, started + offset - time.monotonic())):
                return
            fault = Fault(kind, time.monotonic() - started, now_utc())
            try:
                with self.services.lock:
                    self.inject(fault)
            except Exception as exc:
                fault.detail += f" [injection failed: {type(exc).__name__}: {exc}]"
                log(f"fault {kind} failed: {exc}")
            self.faults.append(fault)
            log(f"fault {len(self.faults)}: {kind}: {fault.detail}")

    def _probe(self, fault: Fault) -> None:
        def run() -> None:
            body = {
                "type": "soak-short",
                "params": {"seconds": 0},
                "priority": 9,
                "metadata": {"soak": self.load.run_id, "ref": uuid.uuid4().hex, "probe": fault.kind},
            }
            job_id = self.load.submit(body, "probe", give_up_at=self.probe_deadline)
            if job_id is None:
                fault.outcome = "probe never accepted"
                return
            fault.probe_id = job_id
            from tasks_app.models import Job

            probing, tracking = True, bool(fault.hit)
            while (probing or tracking) and time.monotonic() < self.probe_deadline:
                if probing:
                    row = db_call(
                        lambda: Job.objects.filter(pk=job_id).values("status", "finished_at").first()
                    )
                    if row is not None and row["status"] in TERMINAL:
                        probing = False
                        if row["status"] == "succeeded" and row["finished_at"] is not None:
                            fault.recovery = (row["finished_at"] - fault.at).total_seconds()
                            fault.outcome = "recovered"
                        else:
                            fault.outcome = f"probe ended {row['status']}"
                if tracking:
                    rows = db_call(
                        lambda: list(
                            Job.objects.filter(pk__in=list(fault.hit)).values_list("id", "status", "worker")
                        )
                    )
                    if all(
                        status in TERMINAL
                        or status == "scheduled"
                        or (status == "running" and worker != fault.hit[str(pk)])
                        for pk, status, worker in rows
                    ):
                        tracking = False
                        fault.hit_back = (now_utc() - fault.at).total_seconds()
                time.sleep(0.25)
            if probing:
                fault.outcome = "probe did not finish"

        thread = threading.Thread(target=run, name=f"probe-{fault.kind}", daemon=True)
        thread.start()
        self.probes.append(thread)

    def _running_on(self, worker: Child) -> dict[int, tuple[str, str]]:
        """pid -> (job id, worker) of the jobs the database says this worker's processes run."""
        from tasks_app.models import Job

        rows = db_call(
            lambda: list(
                Job.objects.filter(status="running", worker__startswith=f"{worker.name}@").values_list(
                    "id", "worker"
                )
            ),
            patience=10,
        )
        return {int(w.rsplit(":", 1)[1]): (str(pk), w) for pk, w in rows}

    def inject(self, fault: Fault) -> None:
        services, rng = self.services, self.rng
        if fault.kind in ("sigkill_pool", "sigkill_worker", "sigterm_worker"):
            worker = rng.choice(sorted(services.workers, key=lambda c: c.name))
            running = self._running_on(worker)
            pid = worker.process.pid
            if fault.kind == "sigkill_pool":
                children = sorted(c.pid for c in psutil.Process(pid).children())
                busy = sorted(set(children) & set(running))
                if not children:
                    fault.detail = f"{worker.name} had no pool process"
                    self._probe(fault)
                    return
                victim = rng.choice(busy or children)
                fault.hit = dict([running[victim]]) if victim in running else {}
                fault.at = now_utc()
                os.kill(victim, signal.SIGKILL)
                self._probe(fault)
                fault.detail = f"{worker.name} pool process {victim}" + (
                    f" running job {running[victim][0]}" if victim in running else " (idle)"
                )
            elif fault.kind == "sigkill_worker":
                fault.hit = dict(running.values())
                fault.at = now_utc()
                services.stack.kill(worker)  # the whole session: main process and pool
                self._probe(fault)
                services.forget_worker(worker)
                replacement = services.start_job_worker()
                fault.detail = (
                    f"{worker.name} (pid {pid}) and its pool, {len(running)} job(s) running "
                    f"{sorted(fault.hit)}; {replacement.name} started"
                )
            else:
                fault.hit = dict(running.values())
                fault.at = now_utc()
                worker.process.send_signal(signal.SIGTERM)
                self._probe(fault)
                began = time.monotonic()
                try:
                    worker.process.wait(self.soft_shutdown + 30)
                    how = f"exited with {worker.process.returncode} after {time.monotonic() - began:.1f} s"
                except subprocess.TimeoutExpired:
                    how = "did not exit in time: killed"
                services.stack.stop(worker, timeout=1)
                services.forget_worker(worker)
                replacement = services.start_job_worker()
                fault.detail = (
                    f"{worker.name} (pid {pid}), {len(running)} job(s) running "
                    f"{sorted(fault.hit)}; {how}; {replacement.name} started"
                )
        elif fault.kind.startswith("redis_restart"):
            lose = fault.kind == "redis_restart_lost"
            downtime = rng.uniform(0.5, 3.0)
            fault.at = now_utc()
            services.stop_redis(lose_data=lose)
            time.sleep(downtime)
            services.start_redis()
            self._probe(fault)
            fault.detail = f"down {downtime:.1f} s, data {'deleted' if lose else 'kept (AOF)'}"
        elif fault.kind == "postgres_restart":
            downtime = rng.uniform(0.5, 3.0)
            fault.at = now_utc()
            began = time.monotonic()
            self.postgres.stop()
            self._probe(fault)  # its submission is repeated until the API answers again
            time.sleep(downtime)
            self.postgres.start()
            fault.detail = (
                f"pg_ctl stop -m fast, {downtime:.1f} s down, start: {time.monotonic() - began:.1f} s in all"
            )
        else:
            raise ValueError(fault.kind)


# --- the end: drain, then checks --------------------------------------------------------------------


# Longer than the longest job (30 s) plus a lease and a sweep: a drain that sees no job change
# status and no delivery settle for this long will not finish.
STALL_SECONDS = 90


def drain(deadline_seconds: float, injector: Injector) -> tuple[str, float]:
    """Wait until every job has ended and every webhook delivery is settled, the deadline
    passes, or nothing moves for STALL_SECONDS: (how it ended, seconds)."""
    from tasks_app.models import DeliveryStatus, Job, WebhookDelivery

    started = time.monotonic()
    injector.probe_deadline = started + deadline_seconds
    last_change, next_log = started, started
    last_state: tuple[object, int] = ((), -1)
    while True:
        active = db_call(
            lambda: Counter(Job.objects.exclude(status__in=TERMINAL).values_list("status", flat=True))
        )
        unsettled = db_call(
            lambda: WebhookDelivery.objects.filter(
                status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]
            ).count()
        )
        probing = any(t.is_alive() for t in injector.probes)
        elapsed = time.monotonic() - started
        if not active and not unsettled and not probing:
            return "every job ended and every delivery settled", elapsed
        state = (tuple(sorted(active.items())), unsettled)
        if state != last_state:
            last_state, last_change = state, time.monotonic()
        if time.monotonic() - last_change > STALL_SECONDS:
            return f"stalled: nothing moved for {STALL_SECONDS} s: {dict(active)} unfinished", elapsed
        if elapsed > deadline_seconds:
            return f"deadline ({deadline_seconds:.0f} s) passed: {dict(active)} unfinished", elapsed
        if time.monotonic() >= next_log:
            next_log = time.monotonic() + 15
            log(f"drain: {dict(active)} unfinished, {unsettled} deliveries unsettled")
        time.sleep(1)


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Attempt:
    """One attempt as the history tells it: how it ended."""

    number: int
    ending: str = "open"  # succeeded, failed, worker-lost, cancelled, retry-scheduled, taken-back, open
    retried_after: bool = False


def read_history(events: list[tuple[int, str, str, str]]) -> tuple[list[Attempt], list[str]]:
    """The attempts in a job's history (seq, kind, status, message rows in order), and what is
    inconsistent about it."""
    problems: list[str] = []
    attempts: list[Attempt] = []
    current: Attempt | None = None
    for _seq, kind, status, message in events:
        if kind == "retry":
            if current is not None and current.ending == "open":
                problems.append(f"retried while attempt {current.number} was open")
            if current is not None:
                current.retried_after = True
            continue
        if kind != "status":
            continue
        if status == "running":
            match = CLAIM_ATTEMPT.search(message)
            number = int(match.group(1)) if match else -1
            if current is not None and current.ending == "open":
                problems.append(f"attempt {number} claimed while attempt {current.number} was open")
            current = Attempt(number)
            attempts.append(current)
            continue
        if current is None or current.ending != "open":
            continue  # a change before any claim (cancelled while queued) or after an ending
        if status == "succeeded":
            current.ending = "succeeded"
        elif status == "failed":
            current.ending = "worker-lost" if "lease expired" in message else "failed"
        elif status == "cancelled":
            current.ending = "cancelled"
        elif status == "scheduled":
            current.ending = "retry-scheduled"
        elif status == "queued":
            current.ending = "taken-back"
    numbers = [a.number for a in attempts]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"attempt numbers {numbers}")
    return attempts, problems


@dataclass
class Facts:
    """What the checks compare: the database, the completion log and what the clients did."""

    jobs: dict[str, dict[str, Any]]  # job id -> its row
    events: dict[str, list[tuple[int, str, str, str]]]  # job id -> (seq, kind, status, message)
    deliveries: list[dict[str, Any]]
    completions: dict[str, dict[int, int]]  # job id -> attempt -> completion lines
    accepted: dict[str, Submission]
    cancels: dict[str, str]


def gather_facts(ledger: Ledger, completions_file: Path) -> Facts:
    from tasks_app.models import Job, JobEvent, WebhookDelivery

    rows = db_call(
        lambda: list(
            Job.objects.values(
                "id", "type", "status", "attempts", "max_attempts", "error", "dispatched_at",
                "version", "metadata", "callback_url", "created_at",
            )
        )
    )  # fmt: skip
    events: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)
    history = db_call(
        lambda: list(
            JobEvent.objects.order_by("job_id", "seq").values_list(
                "job_id", "seq", "kind", "status", "message"
            )
        )
    )
    for pk, seq, kind, status, message in history:
        events[str(pk)].append((seq, kind, status, message))
    deliveries = db_call(
        lambda: list(WebhookDelivery.objects.values("job_id", "n", "event_type", "webhook_id", "status"))
    )
    completions: dict[str, dict[int, int]] = defaultdict(dict)
    for line in completions_file.read_text().splitlines():
        job_id, _, attempt = line.partition(" ")
        completions[job_id][int(attempt)] = completions[job_id].get(int(attempt), 0) + 1
    with ledger.lock:
        accepted, cancels = dict(ledger.jobs), dict(ledger.cancels)
    jobs = {str(row["id"]): dict(row) for row in rows}
    return Facts(jobs, events, [dict(d) for d in deliveries], completions, accepted, cancels)


def check_lost_stuck_duplicated(facts: Facts) -> list[Check]:
    """1. Every accepted job is in the database, once, and has ended."""
    jobs, events = facts.jobs, facts.events
    lost = Check("lost (accepted, not in the database)")
    lost.problems = [
        f"{job_id} {s.type} via {s.source}" for job_id, s in facts.accepted.items() if job_id not in jobs
    ]
    duplicated = Check("duplicated (one submission, several jobs)")
    refs = Counter(str(row["metadata"].get("ref")) for row in jobs.values())
    duplicated.problems = [f"ref {ref}: {n} jobs" for ref, n in refs.items() if n > 1]
    orphans = [job_id for job_id in jobs if job_id not in facts.accepted]
    if orphans:
        duplicated.notes.append(
            f"{len(orphans)} job(s) in the database no client was told about: {orphans[:5]}"
        )
    stuck = Check("stuck (not ended after the drain)")
    for job_id, row in jobs.items():
        if row["status"] not in TERMINAL:
            last = events[job_id][-1][3] if events[job_id] else ""
            dispatched = f"{row['dispatched_at']:%H:%M:%S}" if row["dispatched_at"] else "None"
            stuck.problems.append(
                f"{job_id} {row['type']} {row['status']} created {row['created_at']:%H:%M:%S} "
                f"dispatched_at={dispatched} attempts={row['attempts']}/{row['max_attempts']} "
                f"last event: {last[:100]!r}"
            )
    return [lost, stuck, duplicated]


def check_final_states(facts: Facts) -> Check:
    """2. Each final status is the one that matches what happened to the job."""
    wrong = Check("wrong final state")
    worker_lost_failures: list[str] = []
    for job_id, row in facts.jobs.items():
        status = row["status"]
        if status not in TERMINAL:
            continue
        cancel = facts.cancels.get(job_id)
        error_type = (row["error"] or {}).get("type")
        out_of_attempts = row["attempts"] >= row["max_attempts"]
        # Failed because its worker died on the last attempt: the history's last word says so.
        last_message = facts.events[job_id][-1][3] if facts.events[job_id] else ""
        worker_lost = error_type == "WorkerLost" and out_of_attempts and "lease expired" in last_message
        what = f"{job_id} {row['type']}: {status}"
        if status == "failed" and error_type:
            what += f" ({error_type}, attempt {row['attempts']}/{row['max_attempts']})"
        if status == "cancelled":
            if cancel not in ("accepted", "ambiguous"):
                wrong.problems.append(f"{what}, but no cancel was asked for (cancel: {cancel})")
            continue
        if cancel == "accepted":
            wrong.problems.append(f"{what}, but a cancel was accepted")
            continue
        if worker_lost:
            worker_lost_failures.append(job_id)
        if row["type"] == "soak-fail":
            ok = status == "failed" and (error_type == "SoakFailure" or worker_lost)
        elif row["type"] == "soak-flaky":
            ran_out = error_type == "SoakFlakyError" and out_of_attempts
            ok = status == "succeeded" or (status == "failed" and (worker_lost or ran_out))
        else:
            ok = status == "succeeded" or (status == "failed" and worker_lost)
        if not ok:
            wrong.problems.append(what)
    if worker_lost_failures:
        wrong.notes.append(
            f"{len(worker_lost_failures)} job(s) failed with WorkerLost after all their attempts "
            f"(allowed): {worker_lost_failures[:5]}"
        )
    return wrong


def check_completions(facts: Facts) -> Check:
    """3. No attempt's code completed twice; a job's code completed in several attempts only when
    the history took the earlier ones back; an ended job's code completed once in its last."""
    double = Check("double completion")
    rerun_after_completion: list[str] = []
    for job_id, row in facts.jobs.items():
        attempts, _ = read_history(facts.events[job_id])
        by_number = {a.number: a for a in attempts}
        final = row["attempts"]
        done = facts.completions.get(job_id, {})
        for attempt, count in sorted(done.items()):
            if count > 1:
                double.problems.append(f"{job_id} {row['type']}: attempt {attempt} completed {count} times")
            if attempt > final or attempt < 1:
                double.problems.append(
                    f"{job_id} {row['type']}: a completion for attempt {attempt} of {final}"
                )
            elif attempt < final:
                earlier = by_number.get(attempt)
                ending = earlier.ending if earlier else "missing"
                retried = earlier is not None and earlier.retried_after
                if ending in ("retry-scheduled", "taken-back") or (
                    ending in ("failed", "cancelled", "worker-lost") and retried
                ):
                    if ending == "taken-back":
                        rerun_after_completion.append(f"{job_id} {row['type']} attempt {attempt}")
                else:
                    double.problems.append(
                        f"{job_id} {row['type']}: attempt {attempt} completed, ended {ending!r}, "
                        f"yet attempt {final} ran"
                    )
        code_ended = row["status"] == "succeeded" or (
            row["status"] == "failed"
            and (row["error"] or {}).get("type") in ("SoakFailure", "SoakFlakyError")
        )
        if code_ended and done.get(final, 0) != 1:
            double.problems.append(
                f"{job_id} {row['type']} {row['status']}: {done.get(final, 0)} completion(s) "
                f"for its final attempt {final}"
            )
    if rerun_after_completion:
        double.notes.append(
            f"{len(rerun_after_completion)} attempt(s) ran to their end, were taken back (lease expired) "
            f"and ran again (allowed): {rerun_after_completion[:5]}"
        )
    multi = sum(1 for done in facts.completions.values() if len(done) > 1)
    double.notes.append(f"{multi} job(s) whose code completed in more than one attempt (retries, take-backs)")
    return double


def check_history(facts: Facts) -> Check:
    """4. Each job's history: seq 1 is its creation and seqs rise (progress writes bump the
    version without an event, so they are not contiguous), an ended job's last change is its
    last event, whose status is the job's, attempts are claimed 1, 2, 3... and each run (runs
    are split by retries) ends exactly once."""
    history = Check("inconsistent history")
    for job_id, row in facts.jobs.items():
        job_events = facts.events[job_id]
        attempts, problems = read_history(job_events)
        ended = row["status"] in TERMINAL
        seqs = [e[0] for e in job_events]
        if not job_events:
            problems.append("no events")
        else:
            if seqs[0] != 1 or job_events[0][1] != "created":
                problems.append(f"first event is #{seqs[0]} {job_events[0][1]}")
            if any(b <= a for a, b in itertools.pairwise(seqs)) or seqs[-1] > row["version"]:
                problems.append(f"seqs {seqs} against version {row['version']}")
            if ended and seqs[-1] != row["version"]:
                problems.append(f"last event #{seqs[-1]} but version {row['version']}")
            if ended and job_events[-1][2] != row["status"]:
                problems.append(f"last event says {job_events[-1][2]}, the job {row['status']}")
            runs: list[int] = [0]
            for _seq, kind, status, _message in job_events:
                if kind == "retry":
                    runs.append(0)
                elif kind == "status" and status in TERMINAL:
                    runs[-1] += 1
            closed = runs if ended else runs[:-1]
            if any(n != 1 for n in closed) or (not ended and runs[-1]):
                problems.append(f"terminal events per run {runs}")
        if attempts and attempts[-1].number != row["attempts"]:
            problems.append(f"last claimed attempt {attempts[-1].number}, attempts={row['attempts']}")
        if not attempts and row["attempts"]:
            problems.append(f"attempts={row['attempts']} but no claim in the history")
        history.problems += [f"{job_id} {row['type']} {row['status']}: {problem}" for problem in problems]
    return history


def check_webhooks(facts: Facts, receiver: Receiver) -> Check:
    """5. Every delivery settled (delivered or failed after its schedule), every delivered one
    received as what it claims to be, and every ended job with a callback has its final event."""
    hooks = Check("webhook problems")
    received = receiver.received
    finals = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
    delivered_events: dict[str, set[str]] = defaultdict(set)
    for d in facts.deliveries:
        job_id, webhook_id = str(d["job_id"]), d["webhook_id"]
        delivered_events[job_id].add(d["event_type"])
        what = f"delivery {webhook_id} ({d['event_type']} #{d['n']} of {job_id})"
        if d["status"] not in ("succeeded", "failed"):
            hooks.problems.append(f"{what}: {d['status']}")
        elif d["status"] == "succeeded" and webhook_id not in received:
            hooks.problems.append(f"{what}: delivered, never received")
        elif d["status"] == "succeeded" and received[webhook_id] != (d["event_type"], job_id):
            hooks.problems.append(f"{what}: received as {received[webhook_id]}")
    for job_id, row in facts.jobs.items():
        final = finals.get(row["status"])
        if row["callback_url"] and final and final not in delivered_events[job_id]:
            hooks.problems.append(
                f"{job_id} ended {row['status']} with a callback_url but no {final} delivery"
            )
    failed = sum(1 for d in facts.deliveries if d["status"] == "failed")
    hooks.notes.append(
        f"{len(facts.deliveries)} deliveries ({failed} failed after the schedule), "
        f"{receiver.requests} requests received, {receiver.refused} answered 500 on purpose, "
        f"{receiver.duplicates} received again after a 200"
    )
    return hooks


def run_checks(
    ledger: Ledger, receiver: Receiver, completions_file: Path, services: Services
) -> tuple[list[Check], dict[str, Any]]:
    facts = gather_facts(ledger, completions_file)
    exits = Check("processes that exited by themselves")
    exits.problems = list(services.unexpected)
    api = Check("unexpected API answers (4xx)")
    api.problems = list(ledger.api_errors)
    checks = [
        *check_lost_stuck_duplicated(facts),
        check_final_states(facts),
        check_completions(facts),
        check_history(facts),
        check_webhooks(facts, receiver),
        exits,
        api,
    ]
    stats = {
        "statuses": Counter(row["status"] for row in facts.jobs.values()),
        "completion_lines": sum(sum(done.values()) for done in facts.completions.values()),
        "deliveries": len(facts.deliveries),
    }
    return checks, stats


# --- the report ---------------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join("  " + line for line in lines)


def log_scan(log_dir: Path) -> list[str]:
    """ERROR and CRITICAL lines in the processes' logs (plain text or JSON lines), grouped by
    their text with ids, numbers and times masked."""
    found: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        kinds: Counter[str] = Counter()
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") not in ("ERROR", "CRITICAL"):
                    continue
                text = f"{entry['level']} {entry.get('logger', '')}: {entry.get('message', '')}"
            elif " ERROR" in line or " CRITICAL" in line:
                text = re.sub(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s*", "", line)
            else:
                continue
            text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", text)
            text = re.sub(r"\b\d+\b", "N", text)
            kinds[text[:160]] += 1
        if kinds:
            found.append(f"{path.name}: {sum(kinds.values())} line(s)")
            found += [f"    {n:>5} x {text}" for text, n in kinds.most_common(4)]
    return found


def report(
    *,
    seed: int,
    profile: Profile,
    ledger: Ledger,
    faults: list[Fault],
    checks: list[Check],
    stats: dict[str, Any],
    drained: tuple[str, float],
    load_seconds: float,
    log_lines: list[str],
    replay: str,
    environment: list[str],
) -> str:
    by_type = Counter(s.type for s in ledger.jobs.values())
    by_source = Counter(s.source for s in ledger.jobs.values())
    total = len(ledger.jobs)
    out = [
        "",
        f"=== soak report: seed {seed}, {profile.name} profile, {load_seconds / 60:.1f} min of load ===",
        "",
        f"jobs accepted: {total:,} ({total / max(load_seconds, 1) * 60:.0f}/min): "
        + ", ".join(f"{n:,} {source}" for source, n in sorted(by_source.items())),
        "  by type: " + ", ".join(f"{t} {by_type[t]:,}" for t in JOB_TYPES if by_type[t]),
        "  with a callback_url: " + f"{sum(1 for s in ledger.jobs.values() if s.callback):,}",
        "  final statuses: " + ", ".join(f"{s} {n:,}" for s, n in sorted(stats["statuses"].items())),
        "  cancels asked: "
        + f"{len(ledger.cancels)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(Counter(ledger.cancels.values()).items()))
        + ")",
        "  retries asked: "
        + f"{len(ledger.retries)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(Counter(ledger.retries.values()).items()))
        + ")",
    ]
    out += [
        f"  {name}: {n:,}"
        for name, n in sorted(ledger.counts.items())
        if not name.startswith("submitted via")
    ]
    if ledger.failures:
        out.append("  requests repeated because of a fault: " + f"{sum(ledger.failures.values()):,}")
        out += [f"    {n:>5} x {what}" for what, n in ledger.failures.most_common(8)]
    out += ["", f"faults: {len(faults)}"]
    rows: list[tuple[str, ...]] = [
        (
            "kind",
            "count",
            "recovery p50",
            "recovery max",
            "not recovered",
            "jobs hit",
            "hit jobs back p50/max",
        )
    ]
    for kind in FAULT_KINDS:
        of_kind = [f for f in faults if f.kind == kind]
        times = [f.recovery for f in of_kind if f.recovery is not None]
        back = [f.hit_back for f in of_kind if f.hit_back is not None]
        rows.append(
            (
                kind,
                str(len(of_kind)),
                f"{statistics.median(times):.1f} s" if times else "-",
                f"{max(times):.1f} s" if times else "-",
                str(len(of_kind) - len(times)),
                str(sum(len(f.hit) for f in of_kind)),
                f"{statistics.median(back):.1f} / {max(back):.1f} s" if back else "-",
            )
        )
    out.append(table(rows))
    out += ["", "fault log:"]
    for n, f in enumerate(faults, 1):
        recovery = f"{f.recovery:.1f} s" if f.recovery is not None else f.outcome
        hit_back = f"; hit jobs back after {f.hit_back:.1f} s" if f.hit_back is not None else ""
        out.append(f"  {n:>2}. +{f.offset:6.1f} s {f.kind:<25} recovery {recovery:<9} {f.detail}{hit_back}")
    out += ["", f"drain: {drained[0]} after {drained[1]:.0f} s", "", "checks:"]
    rows = [("check", "count", "ok")]
    for check in checks:
        rows.append((check.name, str(len(check.problems)), "yes" if not check.problems else "NO"))
    out.append(table(rows))
    for check in checks:
        for note in check.notes:
            out.append(f"  note ({check.name}): {note}")
        if check.problems:
            out.append(f"  {check.name}:")
            out += [f"    {p}" for p in check.problems[:25]]
            if len(check.problems) > 25:
                out.append(f"    ... and {len(check.problems) - 25} more")
    out.append(
        f"  completion lines: {stats['completion_lines']:,}; webhook deliveries: {stats['deliveries']:,}"
    )
    if log_lines:
        out += ["", "errors in the processes' logs (information):", *[f"  {line}" for line in log_lines]]
    failed = [c.name for c in checks if c.problems]
    out += [
        "",
        f"RESULT: {'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}",
        f'seed {seed} (replay: {"".join(f"{item} " for item in environment)}make soak SOAK_ARGS="{replay}")',
    ]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Iterable[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--minutes", type=float, default=None, help="minutes of load (default 20; 3 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default: random)")
    parser.add_argument(
        "--quick", action="store_true", help="the CI variant: ~3 minutes, every fault kind once"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with every log")
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds to inject (default: all of {', '.join(FAULT_KINDS)})",
    )
    args = parser.parse_args(list(argv))
    kinds = tuple(kind.strip() for kind in args.faults.split(",") if kind.strip())
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not kinds:
        parser.error(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    args.fault_kinds = kinds
    return args


def replay_args(args: argparse.Namespace, seed: int) -> str:
    """The options that run the same schedule again."""
    replay = f"--seed {seed}" + (" --quick" if args.quick else "")
    if args.minutes is not None:
        replay += f" --minutes {args.minutes:g}"
    if args.fault_kinds != FAULT_KINDS:
        replay += f" --faults {','.join(args.fault_kinds)}"
    return replay


def settings_know(name: str) -> bool:
    return name in (ROOT / "project" / "settings.py").read_text()


def child_environment(
    postgres: Postgres, services: Services, root: Path, completions: Path, tuning: dict[str, str]
) -> dict[str, str]:
    """What every process of the stack runs with, on top of this environment (as
    bench/harness.py builds it)."""
    return {
        "DATABASE_URL": postgres.url("longrun_soak"),
        "REDIS_URL": services.redis_url,
        "CELERY_BROKER_URL": services.redis_url,
        "CHANNEL_PREFIX": f"longrun-soak-{uuid.uuid4().hex[:8]}",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        # Added to the built-in types, which are always registered.
        "LONGRUN_JOB_MODULES": "bench.soak_job_types",
        "LONGRUN_VAR_DIR": str(root / "var"),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "0",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "plain",
        "LONGRUN_THROTTLE_USER": "100000000/minute",
        "LONGRUN_THROTTLE_ANON": "100000000/minute",
        "LONGRUN_WEBHOOK_ALLOWED_PRIVATE_HOSTS": "127.0.0.1",
        "LONGRUN_SOAK_COMPLETIONS": str(completions),
        "PYTHONUNBUFFERED": "1",
        **tuning,
    }


class Watchdog(threading.Thread):
    """Runs `Services.watchdog_round` every 2 s until stopped."""

    def __init__(self, services: Services) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.services = services
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(2):
            try:
                self.services.watchdog_round()
            except Exception as exc:
                log(f"watchdog: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()


def soak(
    args: argparse.Namespace,
    seed: int,
    profile: Profile,
    schedule: list[tuple[float, str]],
    root: Path,
    postgres: Postgres,
    services: Services,
    receiver: Receiver,
    watchdog: Watchdog,
) -> int:
    """Set up, load with faults, drain, check, report. Returns the exit status."""
    log_dir = root / "logs"
    completions = root / "completions.txt"
    completions.touch()
    completions.chmod(0o666)  # pool processes append to it
    tuning = dict(TUNING)
    if settings_know(REDISPATCH_SETTING):
        tuning[REDISPATCH_SETTING] = REDISPATCH_SECONDS
    log("settings: " + ", ".join(f"{k}={v}" for k, v in tuning.items()))
    if REDISPATCH_SETTING not in tuning:
        log(
            f"note: project/settings.py has no {REDISPATCH_SETTING}: jobs whose broker message a Redis "
            "restart without persistence loses stay queued (reported as stuck)"
        )

    postgres.init()
    postgres.start()
    postgres.create_database("longrun_soak")
    own = child_environment(postgres, services, root, completions, tuning)
    inherited = sorted(
        f"{k}={v}"
        for k, v in os.environ.items()
        if k.startswith(("LONGRUN_", "CELERY_", "DB_")) and k not in own
    )
    if inherited:
        log("from the environment, for every process: " + ", ".join(inherited))
    env = {**os.environ, **own}
    services.stack.env = env
    services.start_redis()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    # This process reads the same database, with a connection per thread (no pool).
    os.environ.update({**env, "DB_POOL_MAX_SIZE": "0"})
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("soak", password=secrets.token_urlsafe(16))
    token = Token.objects.create(user=user).key
    receiver.start()
    services.start_all()
    watchdog.start()
    log(f"stack up: API {services.base_url}, Redis {services.redis_url}, {postgres.url('longrun_soak')}")

    ledger = Ledger()
    load = Load(Api(services.base_url, token), ledger, profile, seed, env["CHANNEL_PREFIX"], receiver.url)
    soft_shutdown = float(TUNING["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    injector = Injector(services, postgres, load, seed, schedule, soft_shutdown)
    stop_faults = threading.Event()
    started = time.monotonic()
    load.start(profile.load_seconds)
    faults = threading.Thread(target=injector.run, args=(started, stop_faults), name="faults", daemon=True)
    faults.start()
    while (left := profile.load_seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(30.0, left))
        log(
            f"load: {len(ledger.jobs):,} jobs accepted after {time.monotonic() - started:.0f} s, "
            f"backlog {load.backlog}, {len(injector.faults)} faults"
        )
    log("load and faults stopping")
    stop_faults.set()
    faults.join()
    load.finish()
    load_seconds = time.monotonic() - started
    log(f"load stopped after {load_seconds:.0f} s: {len(ledger.jobs):,} jobs accepted; draining")
    drained = drain(profile.drain_seconds, injector)
    log(f"drain: {drained[0]} after {drained[1]:.0f} s; checking")
    checks, stats = run_checks(ledger, receiver, completions, services)
    text = report(
        seed=seed,
        profile=profile,
        ledger=ledger,
        faults=injector.faults,
        checks=checks,
        stats=stats,
        drained=drained,
        load_seconds=load_seconds,
        log_lines=log_scan(log_dir),
        replay=replay_args(args, seed),
        environment=inherited,
    )
    print(text, flush=True)
    (root / "report.txt").write_text(text + "\n")
    record = {
        "seed": seed,
        "jobs": [vars(s) for s in ledger.jobs.values()],
        "cancels": ledger.cancels,
        "retries": ledger.retries,
        "faults": [{**vars(f), "at": f.at.isoformat()} for f in injector.faults],
    }
    (root / "load.json").write_text(json.dumps(record, indent=1))
    return 1 if any(c.problems for c in checks) else 0


def main(argv: Iterable[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**9)
    profile = make_profile(args.minutes, args.quick)
    schedule = fault_schedule(random.Random(seed), profile, args.fault_kinds)
    log(
        f"soak: seed {seed}, {profile.name} profile, {profile.load_seconds / 60:g} min of load, {len(schedule)} faults"
    )

    bin_dir = postgres_bin_dir()  # exits with a message when PostgreSQL is not installed
    root = Path(tempfile.mkdtemp(prefix="longrun-soak-"))
    root.chmod(0o755)  # PostgreSQL's user must reach its data directory
    (root / "logs").mkdir()
    try:
        postgres = Postgres(root, root / "logs" / "postgres.log", bin_dir)
    except SystemExit:
        shutil.rmtree(root)
        raise
    services = Services({}, root, root / "logs")
    receiver = Receiver(seed)
    watchdog = Watchdog(services)
    log(f"temporary directory {root}; PostgreSQL from {postgres.bin}")
    exit_code = 1
    try:
        exit_code = soak(args, seed, profile, schedule, root, postgres, services, receiver, watchdog)
    finally:
        watchdog.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass  # Django was never set up
        services.shutdown()
        if receiver.thread.is_alive():
            receiver.stop()
        if postgres.running():
            try:
                postgres.stop()
            except Exception as exc:
                log(f"could not stop PostgreSQL: {exc}")
        if args.keep or exit_code:
            log(f"kept {root} (logs/, completions.txt, load.json, report.txt)")
        else:
            shutil.rmtree(root, ignore_errors=True)
        log(f"seed {seed}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
