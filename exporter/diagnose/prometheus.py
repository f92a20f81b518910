"""A small client for Prometheus's HTTP API (`/api/v1/query`, `query_range`, `series`, `label/…/values`,
`rules`) over httpx. Every failure is a `PrometheusError` with a one-line message for the user.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx

from exporter.redact import redact_url


class PrometheusError(Exception):
    """Prometheus cannot be reached, answered an error, or did not answer like Prometheus."""


def _one_line(text: str, limit: int = 200) -> str:
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def promql_string(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def regex_escape(text: str) -> str:
    """Escapes every character RE2 could read as syntax (any non-word character)."""
    return "".join(ch if ch.isalnum() or ch == "_" else "\\" + ch for ch in text)


class Prometheus:
    def __init__(self, url: str, timeout: float = 15.0, transport: httpx.BaseTransport | None = None) -> None:
        if not re.match(r"^https?://", url):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)  # user info and query values may hold credentials
        parts = urllib.parse.urlsplit(self.url)
        auth = None
        if parts.username is not None:
            auth = httpx.BasicAuth(
                urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
            )
            self.url = urllib.parse.urlunsplit(
                (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, "")
            ).rstrip("/")
        self._client = httpx.Client(
            timeout=timeout,
            follow_redirects=True,
            auth=auth,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """The `data` of a successful API answer; PrometheusError otherwise."""
        url = f"{self.url}/api/v1/{path}"
        try:
            response = self._client.get(url, params=list(params))
        except httpx.TimeoutException:
            raise PrometheusError(f"Prometheus at {self.shown} did not answer in time ({path})") from None
        except httpx.HTTPError as exc:
            reason = _one_line(str(exc)) or type(exc).__name__
            raise PrometheusError(f"cannot reach Prometheus at {self.shown}: {reason}") from None
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            if response.status_code >= 400:
                body = _one_line(response.text, 120)
                raise PrometheusError(
                    f"Prometheus at {self.shown} answered HTTP {response.status_code} to {path}"
                    + (f": {body}" if body else "")
                )
            raise PrometheusError(
                f"{self.shown} did not answer {path} with Prometheus API JSON (is it a Prometheus server?)"
            )
        if payload.get("status") != "success" or response.status_code >= 400:
            error = _one_line(str(payload.get("error") or payload.get("errorType") or "no reason given"))
            raise PrometheusError(
                f"Prometheus at {self.shown} answered HTTP {response.status_code} to {path}: {error}"
            )
        return payload.get("data")

    def query(self, expr: str, time: float) -> list[dict[str, Any]]:
        data = self.get("query", [("query", expr), ("time", _ts(time))])
        return list(data.get("result", [])) if isinstance(data, dict) else []

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = [("query", expr), ("start", _ts(start)), ("end", _ts(end)), ("step", f"{step:.3f}")]
        data = self.get("query_range", params)
        return list(data.get("result", [])) if isinstance(data, dict) else []

    def series(self, matchers: Sequence[str], start: float, end: float) -> list[dict[str, str]]:
        params = [("match[]", m) for m in matchers] + [("start", _ts(start)), ("end", _ts(end))]
        data = self.get("series", params)
        return [dict(item) for item in data] if isinstance(data, list) else []

    def label_values(self, label: str, matchers: Sequence[str], start: float, end: float) -> list[str]:
        params = [("match[]", m) for m in matchers] + [("start", _ts(start)), ("end", _ts(end))]
        data = self.get(f"label/{label}/values", params)
        return [str(item) for item in data] if isinstance(data, list) else []

    def alerting_rules(self) -> Any:
        """`/api/v1/rules?type=alert`'s data, or None where the server has no rules API (an old server, a
        query front-end): the thresholds then keep their defaults."""
        try:
            return self.get("rules", [("type", "alert")])
        except PrometheusError:
            return None


def _ts(value: float) -> str:
    return f"{value:.3f}"
