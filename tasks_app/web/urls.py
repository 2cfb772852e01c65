"""Routes of the pages for people (included at the site root by project/urls.py)."""

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from . import health, metrics, views


class FaviconView(RedirectView):
    """Browsers ask for /favicon.ico on every page that names no icon (the API docs, a JSON
    answer opened in a tab): send them to the site's icon."""

    permanent = True

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        return static("tasks_app/favicon.svg")


urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-page"),
    path("workers/", views.workers, name="workers-page"),
    path("schedules/", views.schedules_page, name="schedules-page"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
]
