"""Who is on the other end of a WebSocket.

- Non-browser clients send `Authorization: Token <key>` on the handshake (never a token in the
  URL: URLs get logged). They need no Origin.
- Browsers authenticate with their session cookie. A browser always sends Origin, and a cookie
  would ride along on a cross-site page's socket too, so for them the Origin must be one of our
  hosts (cross-site WebSocket hijacking).

Anything else is anonymous, and the consumer refuses the handshake.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.contrib.auth.models import AnonymousUser
from rest_framework.authtoken.models import Token


@database_sync_to_async
def _user_for_token(key: str) -> Any:
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return AnonymousUser()
    return token.user


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class WebSocketAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)
        # Channels' own check of an Origin against ALLOWED_HOSTS.
        self.origins = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        origin = _header(scope, b"origin")
        if origin is not None and not self.origins.valid_origin(urlparse(origin)):
            return await WebsocketDenier()(scope, receive, send)
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            user = (
                await _user_for_token(key.strip())
                if scheme.lower() == "token" and key.strip()
                else AnonymousUser()
            )
            return await self.inner({**scope, "user": user}, receive, send)
        if origin is None:
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        return await self.with_session(scope, receive, send)
