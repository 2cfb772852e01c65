from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("", include("tasks_app.web.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("tasks_app.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

handler404 = "tasks_app.api.errors.not_found"
handler500 = "tasks_app.api.errors.server_error"
