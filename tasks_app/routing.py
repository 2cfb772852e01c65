"""WebSocket routes. The live-updates consumer (`/ws/jobs/`) is added by the live issue."""

from django.urls import path  # noqa: F401

websocket_urlpatterns: list = []
