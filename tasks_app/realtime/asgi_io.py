"""Plain ASGI plumbing for the live HTTP front (`realtime.http`): a receive that can be replayed
to Django, waiting for the client to leave, and sending a Django response by hand."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpResponse

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ReplayableReceive:
    """`receive`, remembering what it took, so a request handed on to Django gets it again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._taken: list[dict[str, Any]] = []

    async def __call__(self) -> dict[str, Any]:
        message = await self._receive()
        self._taken.append(message)
        return message

    def replay(self) -> Receive:
        taken = list(self._taken)

        async def receive() -> dict[str, Any]:
            return taken.pop(0) if taken else await self._receive()

        return receive


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def response_headers(response: HttpResponse) -> list[tuple[bytes, bytes]]:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    headers = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in response.items()]
    headers += [
        (b"set-cookie", cookie.output(header="").strip().encode("latin-1"))
        for cookie in response.cookies.values()
    ]
    return headers


async def send_response(send: Send, response: HttpResponse) -> None:
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response_headers(response)}
    )
    await send({"type": "http.response.body", "body": response.content})
