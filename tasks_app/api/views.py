"""The REST API: thin callers of selectors (reads) and services (writes)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import metrics, polling, registry, selectors
from ..conf import BULK_LIMIT, MAX_WAIT_SECONDS, SNAPSHOT_LIMIT
from ..models import Job
from ..realtime import messages, sse
from ..serializers import JobEventSerializer, JobSerializer
from ..services import control, submission
from ..services import webhooks as webhook_state
from .errors import problems
from .filters import JobFilter, JobOrderingFilter
from .idempotency import IDEMPOTENCY_KEY_PATTERN, request_fingerprint
from .mixins import ThrottleBeforePermissionsMixin, request_user
from .pagination import JobCursorPagination
from .serializers import (
    EventStreamFrameSerializer,
    JobBulkCancelResultSerializer,
    JobBulkCancelSerializer,
    JobBulkCreatedSerializer,
    JobBulkCreateSerializer,
    JobCreateSerializer,
    JobEventsParams,
    JobTypeSerializer,
    QueueSerializer,
    SigningSecretsSerializer,
    StatsSerializer,
    WebhookDeliverySerializer,
    WorkerSerializer,
)


class JobViewSet(
    ThrottleBeforePermissionsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = JobSerializer
    # The cursor paginator takes its ordering from the first backend that has get_ordering.
    filter_backends = [DjangoFilterBackend, JobOrderingFilter]
    filterset_class = JobFilter
    pagination_class = JobCursorPagination
    lookup_value_regex = polling.UUID_PATTERN

    def get_queryset(self) -> QuerySet[Job]:
        return selectors.job_list_visible(self.request.user)

    def get_object(self) -> Job:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def get_changeable_object(self) -> Job:
        """The job to act on: 404 if the user may not see it, 403 if they may see but not change
        it (staff with only the view permission, as in the admin)."""
        job = self.get_object()
        if not selectors.may_change_job(self.request.user, job):
            raise PermissionDenied("You may view this job but not change it (the change_job permission).")
        return job

    def filter_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.request.query_params.get("owner") and not selectors.sees_every_job(self.request.user):
            raise PermissionDenied("Only staff who may view every job can filter by owner.")
        queryset = super().filter_queryset(queryset)
        return queryset

    @extend_schema(
        parameters=[JobOrderingFilter.schema_parameter()],
        responses={200: JobSerializer(many=True), **problems(400, 401, 403, 429)},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """My jobs (all jobs, for staff), newest first unless `ordering` says otherwise."""
        return super().list(request, *args, **kwargs)

    @extend_schema(
        parameters=[
            polling.JobRetrieveParams,
            OpenApiParameter(
                "If-None-Match", str, OpenApiParameter.HEADER, description="An ETag from an earlier answer."
            ),
        ],
        responses={
            200: OpenApiResponse(
                JobSerializer,
                description="The job. `ETag` carries its version; `Retry-After` a poll interval while it has not "
                f"ended. With `wait` (at most {MAX_WAIT_SECONDS} s) and If-None-Match, the answer waits for a "
                "version other than that one; an unchanged job then answers 304.",
            ),
            304: OpenApiResponse(description="Not modified: the version in If-None-Match is current."),
            **problems(400, 401, 404, 429),
        },
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """One job. Supports ETag/If-None-Match, and long-polling with `?wait=N` (served by the
        live front, `realtime.http`, under an ASGI server; here it answers at once)."""
        polling.wait_seconds(request.query_params)
        job = self.get_object()
        headers = polling.job_headers(job)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match and polling.etag_matches(headers["ETag"], if_none_match):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(JobSerializer(job).data, headers=headers)

    @extend_schema(
        request=JobCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN.pattern},
                OpenApiParameter.HEADER,
                description="Up to 255 printable ASCII characters, unique per request you mean once. "
                "Repeating the request with the same key and body returns the original job (with "
                "`Idempotent-Replayed: true`) and creates nothing; the same key with another body is 422. "
                "Keys are scoped to the user and kept at least 24 hours.",
            )
        ],
        responses={202: JobSerializer, **problems(400, 401, 409, 413, 415, 422, 429)},
    )
    def create(self, request: Request) -> Response:
        """Submit a job. It is persisted at once and runs as soon as a worker is free (or at `run_at`)."""
        body = JobCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        headers: dict[str, str] = {}
        if key is None:
            job = submission.job_create(owner=request_user(request), **body.validated_data)
        else:
            if not IDEMPOTENCY_KEY_PATTERN.match(key):
                raise serializers.ValidationError(
                    {"Idempotency-Key": ["Must be 1 to 255 printable ASCII characters without spaces."]}
                )
            job, replayed = submission.job_create_idempotent(
                owner=request_user(request),
                key=key,
                fingerprint=request_fingerprint(request.data),
                **body.validated_data,
            )
            headers["Idempotency-Key"] = key
            if replayed:
                headers["Idempotent-Replayed"] = "true"
        headers["Location"] = request.build_absolute_uri(reverse("api:job-detail", args=[job.pk]))
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                str,
                OpenApiParameter.HEADER,
                description="Sent by EventSource on reconnect: the history entries after this version are "
                "replayed (`event: history`) before the current job.",
            )
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                EventStreamFrameSerializer,
                description="Server-Sent Events. `event: job` frames carry `{event, version, job, entry?}` "
                "with `id:` the job's version; `event: history` frames replay missed history entries. Through "
                "Daphne the stream stays open with live updates and heartbeats and closes once the job has ended; "
                "elsewhere it answers the opening frames only (clients reconnect).",
            ),
            **problems(401, 404, 429),
        },
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[sse.EventStreamRenderer],
        filterset_class=None,
        pagination_class=None,
    )
    def stream(self, request: Request, pk: str) -> Response:
        """Server-Sent Events for one job (the opening frames; see `realtime.http` for the live stream)."""
        job = self.get_object()
        after = sse.last_event_id(request.headers.get("Last-Event-ID"))
        history = (
            [messages.entry_data(e) for e in selectors.job_events(job, after=after)]
            if after is not None
            else []
        )
        return Response(
            sse.job_stream_opening(messages.job_data(job), history, after=after), headers=sse.SSE_HEADERS
        )

    @extend_schema(
        operation_id="jobs_stream_all",
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                EventStreamFrameSerializer,
                description=f"Server-Sent Events for all my jobs: first the {SNAPSHOT_LIMIT} most recent "
                "(`event: job`, `event` = `snapshot`), then every change, with `id:` `<job id>:<version>`. After a "
                "reconnect the snapshot comes again; compare versions.",
            ),
            **problems(401, 429),
        },
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="stream",
        renderer_classes=[sse.EventStreamRenderer],
        filterset_class=None,
        pagination_class=None,
    )
    def stream_all(self, request: Request) -> Response:
        """Server-Sent Events for all my jobs (the opening frames; see `realtime.http`)."""
        jobs = selectors.job_list_recent(request.user, mine=True, limit=SNAPSHOT_LIMIT)
        frames = sse.jobs_stream_opening([messages.job_data(job) for job in reversed(jobs)])
        return Response(frames, headers=sse.SSE_HEADERS)

    @extend_schema(responses={200: WebhookDeliverySerializer(many=True), **problems(401, 404, 429)})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def deliveries(self, request: Request, pk: str) -> Response:
        """The job's webhook deliveries to its callback_url, each with every attempt."""
        deliveries = selectors.job_deliveries(self.get_object())
        return Response(WebhookDeliverySerializer(deliveries, many=True).data)

    @extend_schema(
        request=None, responses={202: WebhookDeliverySerializer, **problems(401, 403, 404, 409, 429)}
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"deliveries/(?P<n>[0-9]{1,9})/redeliver",
        filterset_class=None,
        pagination_class=None,
    )
    def redeliver(self, request: Request, pk: str, n: str) -> Response:
        """Send a delivery again now, with the same webhook-id."""
        delivery = get_object_or_404(selectors.job_deliveries(self.get_changeable_object()), n=int(n))
        webhook_state.webhook_redeliver(delivery_id=delivery.pk)
        return Response(
            WebhookDeliverySerializer(selectors.job_deliveries(delivery.job).get(pk=delivery.pk)).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=None, responses={200: JobSerializer, **problems(401, 403, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a job: at once if it has not started, cooperatively if it is running. 409 if it
        has already ended."""
        job = control.job_cancel(job_id=self.get_changeable_object().pk, actor=request.user)
        return Response(JobSerializer(job).data)

    @extend_schema(request=None, responses={202: JobSerializer, **problems(401, 403, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """Run a failed or cancelled job again, as a new attempt of the same job. 409 otherwise."""
        job = control.job_retry(job_id=self.get_changeable_object().pk, actor=request.user)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[JobEventsParams],
        responses={200: JobEventSerializer(many=True), **problems(400, 401, 404, 429)},
    )
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def events(self, request: Request, pk: str) -> Response:
        """The job's history, oldest first."""
        after = JobEventsParams.parse(request.query_params).get("after")
        events = selectors.job_events(self.get_object(), after=after)
        return Response(JobEventSerializer(events, many=True).data)

    @extend_schema(
        operation_id="jobs_bulk_create",
        request=JobBulkCreateSerializer,
        responses={202: JobBulkCreatedSerializer, **problems(400, 401, 413, 415, 429)},
    )
    @action(detail=False, methods=["post"], url_path="bulk", filterset_class=None, pagination_class=None)
    def bulk(self, request: Request) -> Response:
        """Submit up to 1,000 jobs at once. All are validated first: one bad job refuses the whole
        request (errors name `jobs.N.field`) and nothing is written."""
        body = JobBulkCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        jobs = submission.jobs_create_bulk(
            owner=request_user(request), submissions=body.validated_data["jobs"]
        )
        data = {"count": len(jobs), "jobs": JobSerializer(jobs, many=True).data}
        return Response(data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="jobs_bulk_cancel",
        request=JobBulkCancelSerializer,
        responses={200: JobBulkCancelResultSerializer, **problems(400, 401, 413, 415, 429)},
    )
    @action(detail=False, methods=["post"], url_path="cancel", filterset_class=None, pagination_class=None)
    def cancel_many(self, request: Request) -> Response:
        """Cancel every active job matching the filter: my jobs, or anyone's for staff."""
        body = JobBulkCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job_ids = selectors.job_list_cancellable(
            request.user,
            ids=body.validated_data.get("ids"),
            statuses=body.validated_data.get("status"),
            job_type=body.validated_data.get("type"),
            limit=BULK_LIMIT,
        )
        counts = control.jobs_cancel(job_ids=job_ids, actor=request.user)
        return Response({"matched": len(job_ids), **counts})


class JobTypeListView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(responses={200: JobTypeSerializer(many=True), **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """Every registered job type with its description, the JSON Schema of its params and its
        queue."""
        types = [
            {
                "name": job_type.name,
                "description": job_type.description,
                "params_schema": job_type.params_schema,
                "queue": job_type.queue,
            }
            for job_type in registry.all_job_types()
        ]
        return Response(JobTypeSerializer(types, many=True).data)


class SigningSecretView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(responses={200: SigningSecretsSerializer, **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """My webhook signing secrets (created on first use): verify deliveries with any of them."""
        secrets = webhook_state.signing_secrets(owner=request_user(request))
        return Response(SigningSecretsSerializer({"secrets": secrets}).data)


class SigningSecretRotateView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(request=None, responses={200: SigningSecretsSerializer, **problems(401, 429)})
    def post(self, request: Request) -> Response:
        """A new signing secret. The previous one stays valid for a grace period (24 h), and
        deliveries carry a signature for each valid secret meanwhile."""
        secrets = webhook_state.signing_secret_rotate(owner=request_user(request))
        return Response(SigningSecretsSerializer({"secrets": secrets}).data)


class StatsView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(responses={200: StatsSerializer, **problems(401, 429)})
    def get(self, request: Request) -> Response:
        """Counts per status and per type of the jobs I can see, jobs finished per minute over the
        last hour (oldest minute first), and for staff the queue depth over that hour."""
        return Response(StatsSerializer(metrics.dashboard_stats(request.user)).data)


def _staff_who_see_every_job(request: Request, what: str) -> None:
    if not selectors.sees_every_job(request.user):
        raise PermissionDenied(f"Only staff who may view every job (tasks_app.view_job) see the {what}.")


class WorkerListView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(responses={200: WorkerSerializer(many=True), **problems(401, 403, 429)})
    def get(self, request: Request) -> Response:
        """Every Celery worker Longrun knows: its queues, concurrency, state (online, lost,
        stopped) and the jobs it is running. Staff who may view every job only."""
        _staff_who_see_every_job(request, "workers")
        return Response(WorkerSerializer(selectors.workers_list(), many=True).data)


class QueueListView(ThrottleBeforePermissionsMixin, APIView):
    @extend_schema(responses={200: QueueSerializer(many=True), **problems(401, 403, 429)})
    def get(self, request: Request) -> Response:
        """Every queue Longrun uses: its job types, queued, scheduled and running jobs, the oldest
        queued job's wait, jobs finished in the last hour, live workers. Staff who may view
        every job only."""
        _staff_who_see_every_job(request, "queues")
        return Response(QueueSerializer(selectors.queues_overview(), many=True).data)
