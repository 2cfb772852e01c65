"""Routes of the pages for people (included at the site root by project/urls.py)."""

from django.urls import path

from . import pages

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("jobs/<uuid:job_id>/", pages.job_detail, name="job-page"),
    path("accounts/login/", pages.LoginView.as_view(), name="login"),
    path("accounts/logout/", pages.LogoutView.as_view(), name="logout"),
]
