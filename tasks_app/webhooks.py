"""Webhook mechanics without database state: signing (Standard Webhooks), the SSRF guard, and
an HTTP client that connects only to the address it checked.

- Signing: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
  "id.timestamp.body">`, keyed with the user's `whsec_` secret (several signatures, space
  separated, while a rotated secret is still valid).
- SSRF: only http(s); the host is resolved and every address must be public (no loopback,
  private, link-local including 169.254.169.254, unique-local, IPv4-mapped private, multicast,
  unspecified or reserved). Numeric and octal spellings resolve to what they mean and are judged
  by that. The request then goes to the checked address (the Host header and TLS name are the
  URL's), so a DNS answer that changes between check and connect cannot redirect it.
- Redirects are not followed; the whole attempt has one deadline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .conf import app_settings

SECRET_PREFIX = "whsec_"
RESPONSE_BODY_LIMIT = 1024


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets_),
    }


class UnsafeURL(ValueError):
    """The URL may not be called: its scheme, or an address it resolves to."""


class UnresolvableURL(UnsafeURL):
    """The host does not resolve (now): refused at send time, undecidable at submission."""


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _is_public(mapped)
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP to connect to


def check_url(url: str) -> Target:
    """Resolve `url` and return where to connect, or raise UnsafeURL saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("Only http and https URLs are allowed.")
    if not parts.hostname:
        raise UnsafeURL("The URL has no host.")
    if parts.username or parts.password:
        raise UnsafeURL("Credentials in the URL are not allowed.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("The port is not valid.") from None
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnresolvableURL(f"The host {host!r} does not resolve.") from None
    addresses = [str(info[4][0]) for info in infos]
    allowed_private = host.lower() in [h.lower() for h in app_settings.WEBHOOK_ALLOWED_PRIVATE_HOSTS]
    for address in addresses:
        if not allowed_private and not _is_public(ipaddress.ip_address(address.split("%")[0])):
            raise UnsafeURL(f"The host {host!r} resolves to a non-public address ({address}).")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, addresses[0])


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    duration_ms: int
    error: str = ""
    body: str = ""


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def post(target: Target, body: bytes, headers: dict[str, str], *, timeout: float) -> Outcome:
    """POST `body` to the checked address with one overall deadline; never follows redirects."""
    started = time.monotonic()
    deadline = started + timeout
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = connection_class(target.address, target.host, target.port, timeout=timeout)
    # Socket timeouts bound each read, not the attempt: a receiver trickling a byte at a time
    # would never be cut off. This timer ends the attempt at the deadline, whatever it is doing.
    cut = threading.Event()
    guard = threading.Timer(timeout, _cut, args=(conn, cut))
    guard.daemon = True
    guard.start()
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={
                **headers,
                "Content-Type": "application/json",
                "User-Agent": "Longrun-Webhooks/1",
            },
        )
        if conn.sock is not None:
            conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
        response = conn.getresponse()
        chunks, size = [], 0
        while size < RESPONSE_BODY_LIMIT and time.monotonic() < deadline:
            if conn.sock is not None:
                conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = (
                response.read1(RESPONSE_BODY_LIMIT - size)
                if hasattr(response, "read1")
                else response.read(RESPONSE_BODY_LIMIT - size)
            )
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        text = b"".join(chunks).decode("utf-8", "replace")
        if cut.is_set():  # what was read is a truncated answer, whatever its status line said
            return Outcome(None, _ms(started), error="timed out")
        return Outcome(response.status, _ms(started), body=text)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        timed_out = isinstance(exc, (TimeoutError, socket.timeout)) or cut.is_set()
        reason = "timed out" if timed_out else f"{type(exc).__name__}: {exc}"
        return Outcome(None, _ms(started), error=reason[:500])
    finally:
        guard.cancel()
        conn.close()


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
