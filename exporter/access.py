"""Who may ask, and how many at once: the ASGI layer in front of the app.

In order, for every HTTP request: the web config's extra headers are added to whatever is answered; the
web config's `rate_limit` (a token bucket) answers 429 when empty; `basic_auth_users` answers 401 without
valid credentials, except on /healthz and /readyz (liveness and readiness probes carry no password, and
those pages say only "ok" or "ready"; everything else, /metrics and /api/v1/snapshot included, needs
them); then at most `max_requests` requests are served at once (node_exporter's --web.max-requests; 0: no
limit), the others answered 503.

bcrypt is slow on purpose (about 70 ms at cost 10), so, as the exporter-toolkit does, each outcome is
cached for the same user, hash and password (an HMAC of them under a key made at start, never the
password itself), and checks run one at a time on a worker thread so the event loop keeps serving. At
most MAX_PENDING_CHECKS uncached checks wait; more get 429 at once, so a flood of wrong passwords cannot
hold up a scraper whose password is cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.config import DEFAULT_WEB_MAX_REQUESTS
from exporter.listener import BoundedLog
from exporter.webconfig import RateLimit, WebConfigWatcher

if TYPE_CHECKING:
    from exporter.listener import ConnectionGuard

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
MAX_PENDING_CHECKS = 8
CACHE_SIZE = 100
BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; the hash was made from these bytes
# The toolkit's: a bcrypt hash of "fakepassword", checked for unknown users so that timing does not tell
# which users exist.
FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"


class TokenBucket:
    """golang.org/x/time/rate's limiter as the toolkit uses it: `burst` tokens, one more every interval."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        rate = 1.0 / self.limit.interval_seconds
        self._tokens = min(float(self.limit.burst), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def basic_credentials(scope: Scope) -> tuple[str, bytes] | None:
    """(user, password) from the Authorization header, or None if there is no valid Basic one."""
    for name, value in scope["headers"]:
        if name != b"authorization":
            continue
        kind, _, encoded = value.partition(b" ")
        if kind.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            return None
    return None


class Access:
    """The ASGI app in front of `app` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        watcher: WebConfigWatcher,
        max_requests: int = DEFAULT_WEB_MAX_REQUESTS,
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.app = app
        self.watcher = watcher
        self.max_requests = max_requests
        self.guard = guard
        self.log = BoundedLog(log)
        self.in_flight = 0
        self._bucket: TokenBucket | None = None
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_key = os.urandom(32)
        self._bcrypt_lock = asyncio.Lock()
        self._pending = 0

    def _report(self, kind: str, message: str) -> None:
        self.log.report(kind, logging.WARNING, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if self.guard is not None:
            self.guard.request_started(client)
        try:
            await self._serve(scope, receive, send)
        finally:
            if self.guard is not None:
                self.guard.request_finished(client)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.watcher.current
        if config.headers:
            send = _with_headers(send, config.headers)
        if config.rate_limit is not None:
            if self._bucket is None or self._bucket.limit != config.rate_limit:
                self._bucket = TokenBucket(config.rate_limit)
            if not self._bucket.allow():
                await _respond(send, 429, b"Too Many Requests\n")
                return
        if config.users and scope["path"] not in PUBLIC_PATHS:
            verdict = await self.authorized(scope, config.users)
            if verdict is None:
                self._report("auth-busy", f"answered 429: over {MAX_PENDING_CHECKS} password checks waiting")
                await _respond(send, 429, b"Too Many Requests: password checks are queued\n")
                return
            if not verdict:
                await _respond(send, 401, b"Unauthorized\n", [(b"www-authenticate", b"Basic")])
                return
        if self.max_requests and self.in_flight >= self.max_requests:
            self._report(
                "max-requests",
                f"answered 503: {self.in_flight} requests in flight (web_max_requests {self.max_requests})",
            )
            await _respond(send, 503, b"Service Unavailable: too many requests in flight\n")
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def authorized(self, scope: Scope, users: Any) -> bool | None:
        """Whether the request carries a configured user's password; None when too many checks wait."""
        credentials = basic_credentials(scope)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = FAKE_HASH
        key = hmac.new(
            self._cache_key, b"\0".join((user.encode(), hashed, password)), hashlib.sha256
        ).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached and known
        if self._pending >= MAX_PENDING_CHECKS:
            return None
        self._pending += 1
        try:
            async with self._bcrypt_lock:
                cached = self._cache.get(key)  # checked by the request ahead of this one
                if cached is None:
                    cached = await asyncio.to_thread(_checkpw, password, hashed)
                    self._remember(key, cached)
        finally:
            self._pending -= 1
        return cached and known

    def _remember(self, key: bytes, outcome: bool) -> None:
        if len(self._cache) >= CACHE_SIZE:
            for _ in range(CACHE_SIZE // 10):
                self._cache.popitem(last=False)
        self._cache[key] = outcome


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only where basic_auth_users is set

    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], hashed)
    except ValueError:
        return False


def _with_headers(send: Send, headers: tuple[tuple[bytes, bytes], ...]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return send_with_headers


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
