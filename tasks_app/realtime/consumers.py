"""The live WebSocket API (`/ws/jobs/`); the contract is in the README ("Live updates").

Thin: who may see what comes from `tasks_app.selectors`, the same as the REST API; every message
is shaped by `realtime.messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .. import metrics, schedule_selectors, selectors
from ..conf import SCHEDULES_SNAPSHOT_LIMIT, SNAPSHOT_LIMIT
from ..models import Job
from ..serializers import schedules_representation
from . import messages
from .publish import SCHEDULES_STAFF_GROUP, STAFF_GROUP, job_group, owner_group, schedules_owner_group


@database_sync_to_async
def _visible_job(user: Any, job_id: str) -> dict[str, Any] | None:
    try:
        return messages.job_data(selectors.job_get_visible(user, job_id))
    except Job.DoesNotExist:
        return None


@database_sync_to_async
def _sees_every_job(user: Any) -> bool:
    return selectors.sees_every_job(user)


@database_sync_to_async
def _schedules(user: Any) -> tuple[str, list[dict[str, Any]]]:
    """The group of the schedules `user` sees, and their current state."""
    visible = list(schedule_selectors.schedule_list_visible(user)[:SCHEDULES_SNAPSHOT_LIMIT])
    group = SCHEDULES_STAFF_GROUP if selectors.sees_every_job(user) else schedules_owner_group(user.pk)
    return group, schedules_representation(visible)


@database_sync_to_async
def _recent_jobs(user: Any, *, mine: bool) -> list[dict[str, Any]]:
    return [
        messages.job_data(job) for job in selectors.job_list_recent(user, mine=mine, limit=SNAPSHOT_LIMIT)
    ]


class JobsConsumer(AsyncJsonWebsocketConsumer):
    # A client is sent at most MAX_MESSAGES_PER_SECOND (bursts of BURST pass at once). Beyond
    # that, what waits is the latest state of each job, not every step, and at most MAX_PENDING
    # jobs: memory per client is bounded however fast jobs change or however slowly it reads.
    MAX_MESSAGES_PER_SECOND = 50
    BURST = 100
    MAX_PENDING = 500
    # A client that sends this many bad frames or requests is closed (policy violation).
    MAX_BAD_REQUESTS = 20
    POLICY_VIOLATION = 1008

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused
            return
        self.user = user
        self.groups_joined: set[str] = set()
        self.versions: dict[str, int] = {}
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.bad_requests = 0
        self.wakeup = asyncio.Event()
        await self.accept()
        metrics.connections.opened("websocket")
        self.sender = asyncio.create_task(self._send_pending())

    async def disconnect(self, code: int) -> None:
        sender = getattr(self, "sender", None)
        if sender is not None:  # it was accepted (and counted)
            sender.cancel()
            metrics.connections.closed("websocket")
        for group in getattr(self, "groups_joined", ()):
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """A frame. Anything but a JSON text frame is answered with an error; the socket stays
        open (until too many: see MAX_BAD_REQUESTS)."""
        if text_data is None:
            await self._bad_request("Send JSON in text frames; binary frames are not part of the protocol.")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self._bad_request("Not valid JSON.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or content.get("action") not in ("subscribe", "unsubscribe"):
            await self._bad_request(
                'Send {"action": "subscribe" or "unsubscribe", "job": id or "scope": "mine"/"all"/"schedules"}.'
            )
            return
        subscribe = content["action"] == "subscribe"
        if "job" in content:
            await self._subscribe_job(content["job"], subscribe)
        elif content.get("scope") in ("mine", "all"):
            await self._subscribe_scope(content["scope"], subscribe)
        elif content.get("scope") == "schedules":
            await self._subscribe_schedules(subscribe)
        else:
            await self._bad_request('Give "job": "<id>" or "scope": "mine", "all" or "schedules".')

    async def _subscribe_job(self, job_id: Any, subscribe: bool) -> None:
        """Subscribe to (or leave) one job's changes."""
        try:
            job_id = str(uuid.UUID(str(job_id)))
        except ValueError:
            await self._error("not_found", "No such job.")
            return
        if not subscribe:
            await self._leave(job_group(job_id))
            return
        # Check first: a job this user may not see is never joined, so none of its changes can
        # reach the socket. Then join, then read the snapshot: no change slips in between.
        if await _visible_job(self.user, job_id) is None:
            await self._error("not_found", "No such job, or not yours.")
            return
        await self._join(job_group(job_id))
        job = await _visible_job(self.user, job_id)
        if job is None:  # gone meanwhile
            await self._leave(job_group(job_id))
            await self._error("not_found", "No such job, or not yours.")
            return
        await self._snapshot([job], job=job_id)

    async def _subscribe_scope(self, scope: str, subscribe: bool) -> None:
        """Subscribe to (or leave) my jobs, or every job (staff)."""
        if scope == "all" and not await _sees_every_job(self.user):
            await self._error("forbidden", 'Only staff who may view jobs can subscribe to "all".')
            return
        group = STAFF_GROUP if scope == "all" else owner_group(self.user.pk)
        if not subscribe:
            await self._leave(group)
            return
        await self._join(group)
        await self._snapshot(await _recent_jobs(self.user, mine=scope == "mine"), scope=scope)

    async def _subscribe_schedules(self, subscribe: bool) -> None:
        """Subscribe to (or leave) the schedules I see (all of them, for staff): their changes
        and firings, after a snapshot of each."""
        group, schedules = await _schedules(self.user)
        if not subscribe:
            await self._leave(group)
            return
        await self._join(group)
        await self.send_json(messages.schedules_snapshot(schedules))

    async def schedule_event(self, message: dict[str, Any]) -> None:
        """A schedule changed or fired (from the channel layer): rare, so sent at once."""
        await self.send_json(messages.client_schedule(message))

    async def _snapshot(self, jobs: list[dict[str, Any]], **subscription: str) -> None:
        for job in jobs:
            self.versions[job["id"]] = max(self.versions.get(job["id"], 0), job["version"])
            self.pending.pop(job["id"], None)  # the snapshot is newer than anything waiting
        await self.send_json(messages.snapshot(jobs, **subscription))

    async def job_event(self, message: dict[str, Any]) -> None:
        """A job changed (from the channel layer). The same change may arrive through several
        groups (the job's and its owner's); versions drop the repeats and anything older than
        what the client has."""
        job_id = message["job"]["id"]
        if message["version"] <= self.versions.get(job_id, 0):
            return
        self.versions[job_id] = message["version"]
        self.pending.pop(job_id, None)
        self.pending[job_id] = message
        while len(self.pending) > self.MAX_PENDING:
            self.pending.popitem(last=False)  # the client sees the version gap and re-fetches
        self.wakeup.set()

    async def _send_pending(self) -> None:
        rate, tokens, last = self.MAX_MESSAGES_PER_SECOND, float(self.BURST), time.monotonic()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                now = time.monotonic()
                tokens, last = min(self.BURST, tokens + (now - last) * rate), now
                if tokens < 1:
                    await asyncio.sleep((1 - tokens) / rate)  # meanwhile, new states replace old
                    continue
                tokens -= 1
                _, message = self.pending.popitem(last=False)
                await self.send_json(messages.client_job(message))

    async def _join(self, group: str) -> None:
        if group not in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def _leave(self, group: str) -> None:
        if group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.groups_joined.discard(group)

    async def _error(self, code: str, message: str) -> None:
        await self.send_json(messages.error(code, message))

    async def _bad_request(self, message: str) -> None:
        self.bad_requests += 1
        if self.bad_requests > self.MAX_BAD_REQUESTS:
            await self.send_json(messages.error("bad_request", "Too many bad requests; closing."))
            await self.close(code=self.POLICY_VIOLATION)
            return
        await self._error("bad_request", message)
