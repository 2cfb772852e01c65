"""A WebSocket client for the benchmarks: subscribes and timestamps every job message."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any


class Listener:
    """One socket on its own event loop thread; `on_message(message, received_at)` is called for
    every message, on that thread."""

    def __init__(
        self, url: str, token: str, subscribe: dict[str, Any], on_message: Callable[[dict, float], None]
    ) -> None:
        self.url, self.token, self.subscribe, self.on_message = url, token, subscribe, on_message
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        if not self.ready.wait(30):
            raise TimeoutError("the WebSocket did not open")

    async def _run(self) -> None:
        import websockets

        headers = {"Authorization": f"Token {self.token}"}
        async with websockets.connect(self.url, additional_headers=headers, max_queue=None) as socket:
            await socket.send(json.dumps({"action": "subscribe", **self.subscribe}))
            while True:
                message = json.loads(await socket.recv())
                now = time.perf_counter()
                if message.get("type") == "snapshot":
                    self.ready.set()
                self.on_message(message, now)

    def close(self) -> None:
        self.task.cancel()
        try:
            self.task.result(timeout=5)
        except BaseException:  # cancelled, as asked
            pass
        time.sleep(0.05)  # let the socket's own tasks wind down
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
