from django.urls import path
from rest_framework.routers import SimpleRouter

from . import live, views

app_name = "api"

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="job")

urlpatterns = [
    # Same path as the router's job-detail: an async front that can long-poll (?wait=N) without
    # holding a thread or a database connection, and otherwise hands over to the viewset.
    path("jobs/<uuid:pk>/", live.job_detail, name="job-detail-live"),
    path("job-types/", views.JobTypeListView.as_view(), name="job-types"),
    path("stats/", views.StatsView.as_view(), name="stats"),
    *router.urls,
]
