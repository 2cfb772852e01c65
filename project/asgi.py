"""ASGI entry point, served by Daphne: HTTP goes to Django, WebSockets to Channels consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from tasks_app.realtime.auth import WebSocketAuthMiddleware  # noqa: E402
from tasks_app.realtime.http import LiveHttpApp  # noqa: E402
from tasks_app.realtime.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Requests that wait for job changes are answered outside Django's per-request thread.
        "http": LiveHttpApp(django_asgi_app),
        # Token (non-browser) or session cookie with a checked Origin (browser): see realtime.auth.
        "websocket": WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
