from django.urls import path
from rest_framework.routers import SimpleRouter

from . import schedules, views

app_name = "api"

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="job")
router.register("schedules", schedules.ScheduleViewSet, basename="schedule")

urlpatterns = [
    path("job-types/", views.JobTypeListView.as_view(), name="job-types"),
    path("stats/", views.StatsView.as_view(), name="stats"),
    path("workers/", views.WorkerListView.as_view(), name="workers"),
    path("queues/", views.QueueListView.as_view(), name="queues"),
    path("webhook-secret/", views.SigningSecretView.as_view(), name="webhook-secret"),
    path("webhook-secret/rotate/", views.SigningSecretRotateView.as_view(), name="webhook-secret-rotate"),
    *router.urls,
]
