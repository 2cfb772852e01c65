"""The REST API under 32 concurrent clients: `POST /api/jobs/` and `GET /api/jobs/{id}/`,
requests per second and p99, against bare Django views on the same Daphne in the same run that
insert or read one job row (bench/urls.py: no DRF, no validation, no history, no dispatch)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from harness import Env, Result, percentile

CLIENTS = 32
BODY = {"type": "sleep", "params": {"seconds": 0, "steps": 1}}


async def load(
    method: str, urls: list[str], headers: dict[str, str], body: Any, seconds: float
) -> tuple[float, list[float]]:
    """Requests per second and latencies (ms) of CLIENTS clients sending back to back."""
    import httpx

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        n = index
        while time.perf_counter() < deadline:
            url = urls[n % len(urls)]
            n += CLIENTS
            start = time.perf_counter()
            response = await (http.post(url, json=body) if method == "POST" else http.get(url))
            latencies.append((time.perf_counter() - start) * 1000)
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


def run(env: Env) -> list[Result]:
    import requests

    seconds = 4.0 if env.quick else 15.0
    stack = env.processes("api")
    try:
        base = "http://" + env.start_daphne(stack)
        headers = {"Authorization": f"Token {env.token}"}
        session = requests.Session()
        session.headers.update(headers)
        ids = [session.post(f"{base}/api/jobs/", json=BODY, timeout=30).json()["id"] for _ in range(100)]
        results = []
        for name, ours, bare, body in (
            ("POST /api/jobs/", [f"{base}/api/jobs/"], [f"{base}/bench/bare/?owner={env.user_id}"], BODY),
            (
                "GET /api/jobs/{id}/",
                [f"{base}/api/jobs/{i}/" for i in ids],
                [f"{base}/bench/bare/{i}/" for i in ids],
                None,
            ),
        ):
            method = "POST" if body else "GET"
            asyncio.run(load(method, ours, headers, body, 1.0))  # warm up
            ours_rps, ours_ms = asyncio.run(load(method, ours, headers, body, seconds))
            bare_rps, bare_ms = asyncio.run(load(method, bare, headers, body, seconds))
            results += [
                Result("api", f"{name} requests/s", ours_rps, "req/s", bare_rps, "bare Django view",
                       note=f"{CLIENTS} clients, {seconds:.0f} s each, one Daphne process"),
                Result("api", f"{name} p99", percentile(ours_ms, 99), "ms", percentile(bare_ms, 99), "bare Django view",
                       higher_is_better=False),
            ]  # fmt: skip
        return results
    finally:
        stack.stop_all(timeout=10)
        env.reset()


if __name__ == "__main__":
    import sys

    from harness import Table, environment

    with environment(quick="--quick" in sys.argv) as bench_env:
        table = Table()
        table.add(*run(bench_env))
        print(table.render())
