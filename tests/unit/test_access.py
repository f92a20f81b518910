"""The ASGI layer in front of the app: extra headers, rate limit, basic auth (bcrypt, cached), requests in
flight; driven with ASGI messages, no server."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest

from exporter import access
from exporter.access import MAX_PENDING_CHECKS, Access, TokenBucket
from exporter.webconfig import RateLimit, WebConfigWatcher

# bcrypt hash (cost 4) of "right"
HASH_RIGHT = "$2b$04$10A97DjUGMmCBZ5kiESCkuXpBiCv4HSqNuD8lbWAZW8owDDegtHtS"


def watcher(tmp_path: Path, text: str) -> WebConfigWatcher:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return WebConfigWatcher(path)


class App:
    """An ASGI app that answers 200 "hello", optionally waiting for `release` first."""

    def __init__(self) -> None:
        self.calls = 0
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})


class Guard:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def request_started(self, client: Any) -> None:
        self.events.append(("started", client))

    def request_finished(self, client: Any) -> None:
        self.events.append(("finished", client))


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def request(
    app: Any, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 40000),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body = b"".join(message.get("body", b"") for message in messages[1:])
    return start["status"], dict(start["headers"]), body


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_no_web_config_passes_everything_through_and_tells_the_guard(tmp_path: Path) -> None:
    app, guard = App(), Guard()
    front = Access(app, WebConfigWatcher(None), guard=guard)  # type: ignore[arg-type]
    status, _, body = run(request(front))
    assert (status, body) == (200, b"hello")
    assert guard.events == [("started", ("127.0.0.1", 40000)), ("finished", ("127.0.0.1", 40000))]


def test_basic_auth_everywhere_but_the_health_pages(tmp_path: Path) -> None:
    app = App()
    front = Access(app, watcher(tmp_path, f"basic_auth_users: {{prom: '{HASH_RIGHT}'}}\n"))

    async def scenario() -> None:
        for path in ("/metrics", "/api/v1/snapshot", "/", "/no-such-page"):
            status, headers, body = await request(front, path)
            assert status == 401, path
            assert headers[b"www-authenticate"] == b"Basic"
            assert body == b"Unauthorized\n"
        for path in ("/healthz", "/readyz"):
            assert (await request(front, path))[0] == 200, path
        assert (await request(front, headers=basic("prom", "wrong")))[0] == 401
        assert (await request(front, headers=basic("prom", "right")))[0] == 200
        assert (await request(front, headers={"authorization": "Bearer right"}))[0] == 401
        assert (await request(front, headers={"authorization": "Basic !!!"}))[0] == 401
        assert (await request(front, headers={"authorization": "Basic cHJvbQ=="}))[0] == 401  # "prom", no ':'

    run(scenario())
    assert app.calls == 3  # two health pages and the one right password


def test_an_unknown_user_never_gets_in_even_with_the_fake_hashs_password(tmp_path: Path) -> None:
    front = Access(App(), watcher(tmp_path, f"basic_auth_users: {{prom: '{HASH_RIGHT}'}}\n"))
    # the toolkit checks unknown users against a hash of "fakepassword", so their timing matches
    assert run(request(front, headers=basic("nobody", "fakepassword")))[0] == 401
    assert run(request(front, headers=basic("nobody", "right")))[0] == 401


def test_outcomes_are_cached_so_bcrypt_runs_once_per_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[bytes] = []
    real = access._checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(access, "_checkpw", counting)
    front = Access(App(), watcher(tmp_path, f"basic_auth_users: {{prom: '{HASH_RIGHT}'}}\n"))

    async def scenario() -> None:
        for _ in range(5):
            assert (await request(front, headers=basic("prom", "right")))[0] == 200
            assert (await request(front, headers=basic("prom", "wrong")))[0] == 401

    run(scenario())
    assert checks == [b"right", b"wrong"]
    assert all(b"right" not in key for key in front._cache)  # an HMAC, never the password


def test_uncached_checks_beyond_the_queue_get_429_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow(password: bytes, hashed: bytes) -> bool:
        time.sleep(0.05)
        return False

    monkeypatch.setattr(access, "_checkpw", slow)
    front = Access(App(), watcher(tmp_path, f"basic_auth_users: {{prom: '{HASH_RIGHT}'}}\n"))

    async def scenario() -> list[int]:
        answers = await asyncio.gather(
            *(request(front, headers=basic("prom", f"guess{n}")) for n in range(MAX_PENDING_CHECKS + 3))
        )
        return [status for status, _, _ in answers]

    statuses = run(scenario())
    assert statuses.count(401) == MAX_PENDING_CHECKS
    assert statuses.count(429) == 3


def test_at_most_max_requests_in_flight(tmp_path: Path) -> None:
    app = App()
    front = Access(app, WebConfigWatcher(None), max_requests=2)

    async def scenario() -> list[int]:
        app.release = asyncio.Event()
        first = [asyncio.create_task(request(front)) for _ in range(2)]
        await asyncio.sleep(0.01)
        status, _, body = await request(front)
        assert (status, body) == (503, b"Service Unavailable: too many requests in flight\n")
        app.release.set()
        done = [status for status, _, _ in await asyncio.gather(*first)]
        return [*done, (await request(front))[0]]

    assert run(scenario()) == [200, 200, 200]
    assert front.in_flight == 0


def test_zero_max_requests_is_no_limit(tmp_path: Path) -> None:
    app = App()
    front = Access(app, WebConfigWatcher(None), max_requests=0)

    async def scenario() -> list[int]:
        app.release = asyncio.Event()
        tasks = [asyncio.create_task(request(front)) for _ in range(100)]
        await asyncio.sleep(0.01)
        app.release.set()
        return [status for status, _, _ in await asyncio.gather(*tasks)]

    assert run(scenario()) == [200] * 100


def test_extra_headers_on_every_answer(tmp_path: Path) -> None:
    front = Access(
        App(),
        watcher(
            tmp_path,
            f"basic_auth_users: {{prom: '{HASH_RIGHT}'}}\n"
            "http_server_config: {headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}}\n",
        ),
    )
    for headers in ({}, basic("prom", "right")):
        _, sent, _ = run(request(front, headers=headers))
        assert sent[b"x-frame-options"] == b"deny"
        assert sent[b"x-content-type-options"] == b"nosniff"


def test_rate_limit_answers_429_when_the_bucket_is_empty(tmp_path: Path) -> None:
    front = Access(App(), watcher(tmp_path, "rate_limit: {interval: 1h, burst: 2}\n"))

    async def scenario() -> list[int]:
        return [(await request(front))[0] for _ in range(4)]

    assert run(scenario()) == [200, 200, 429, 429]


def test_token_bucket_refills_one_token_per_interval() -> None:
    now = [0.0]
    bucket = TokenBucket(RateLimit(interval_seconds=2.0, burst=3), clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.9
    assert not bucket.allow()
    now[0] = 2.1
    assert bucket.allow() and not bucket.allow()
    now[0] = 100.0
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]  # never more than the burst
    assert not TokenBucket(RateLimit(1.0, 0)).allow()  # burst 0: nothing passes, as in x/time/rate
