"""`tpw-exporter diagnose`'s command line: the window flags, and the failures that must end in one line on
stderr and exit 2 (Prometheus unreachable, an HTTP error, an API error, something that is not Prometheus,
no tpw series), against a small HTTP server on loopback standing in for Prometheus.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import free_port

from exporter.cli import main
from exporter.diagnose.command import UsageError, default_min_duration, parse_duration, parse_time, window
from exporter.diagnose.prometheus import Prometheus, regex_escape

NOW = 1_750_000_000.0
Answer = tuple[int, str, str]  # status, content type, body
Route = Callable[[str, dict[str, list[str]]], Answer]


@contextmanager
def fake_prometheus(route: Route) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering every GET with route(path, query); yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            asked.append(parts.path)
            status, kind, body = route(parts.path, parse_qs(parts.query))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def api(data: object) -> Answer:
    return 200, "application/json", json.dumps({"status": "success", "data": data})


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diagnose", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("tpw-exporter: diagnose: ")
    return err


def test_unreachable_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = run(capsys, "--prometheus", url, "--since", "1h")
    assert code == 2 and out == ""
    assert f"cannot reach Prometheus at {url}" in one_line_error(err)


def test_http_500_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_prometheus(lambda path, q: (500, "text/plain", "internal error\nwith a\nmultiline body")) as (
        url,
        _,
    ):
        code, out, err = run(capsys, "--prometheus", url)
    assert code == 2 and out == ""
    assert "answered HTTP 500 to series: internal error with a multiline body" in one_line_error(err)


def test_prometheus_api_error_is_quoted(capsys: pytest.CaptureFixture[str]) -> None:
    body = json.dumps({"status": "error", "errorType": "bad_data", "error": 'invalid parameter "start"'})
    with fake_prometheus(lambda path, q: (400, "application/json", body)) as (url, _):
        code, _, err = run(capsys, "--prometheus", url)
    assert code == 2 and 'answered HTTP 400 to series: invalid parameter "start"' in one_line_error(err)


def test_not_a_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_prometheus(lambda path, q: (200, "text/html", "<html>Grafana</html>")) as (url, _):
        code, _, err = run(capsys, "--prometheus", url)
    assert code == 2 and "did not answer series with Prometheus API JSON" in one_line_error(err)


def test_no_tpw_series_in_the_window(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_prometheus(lambda path, q: api([])) as (url, asked):
        code, out, err = run(capsys, "--prometheus", url, "--since", "30m", "--node", "gpu-node-7")
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert "no tpw_ series in Prometheus at" in line and "(node gpu-node-7)" in line
    assert asked == ["/api/v1/series"]


def test_no_series_of_the_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    def route(path: str, query: dict[str, list[str]]) -> Answer:
        if "build_info" in query["match[]"][0]:
            return api([{"__name__": "tpw_build_info", "job": "tpw", "instance": "n:9835"}])
        return api([])

    with fake_prometheus(route) as (url, _):
        code, _, err = run(capsys, "--prometheus", url, "--endpoint", "nope")
    assert code == 2 and "no tpw_ series of endpoint nope" in one_line_error(err)


def test_credentials_never_reach_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://admin:s3cret@127.0.0.1:{free_port()}/prom?token=abc"
    code, _, err = run(capsys, "--prometheus", url)
    assert code == 2 and "s3cret" not in err and "abc" not in err and "admin" not in err
    shown = Prometheus("https://u:p@h:1/x?token=abc&a=").shown
    assert shown == "https://<redacted>@h:1/x?token=<redacted>&a=<redacted>"
    # a password written with a '/' in it: no part of it is shown as a host or a path
    assert Prometheus("http://admin:pa/ss@h:9090/prom").shown == "http://<redacted>@h:9090/prom"


def test_png_is_refused_before_asking_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_prometheus(lambda path, q: api([])) as (url, asked):
        code, _, err = run(capsys, "--prometheus", url, "--plot", "incident.png")
    assert code == 2 and "PNG is not supported" in one_line_error(err) and asked == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "2x"], "not a duration: '2x'"),
        (["--since", "0s"], "a duration must be positive"),
        (["--start", "yesterday"], "not a time: 'yesterday'"),
        (["--start", "2025-06-01T02:00:00Z", "--end", "2025-06-01T01:00:00Z"], "must start before it ends"),
        (["--start", "2025-06-01T01:00:00Z", "--since", "1h"], "--start or --since, not both"),
        (["--min-duration=5 min"], "not a duration"),
    ],
)
def test_bad_flags_are_one_line(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    code, _, err = run(capsys, "--prometheus", f"http://127.0.0.1:{free_port()}", *flags)
    assert code == 2 and message in one_line_error(err)


def test_times_and_windows() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400
    assert parse_duration("2d") == 172800 and parse_duration("300") == 300 and parse_duration("500ms") == 0.5
    with pytest.raises(UsageError):
        parse_duration("h")
    assert parse_time("2025-06-01T01:00:00Z", NOW) == 1748739600
    assert parse_time("2025-06-01T03:00:00+02:00", NOW) == 1748739600
    assert parse_time("2025-06-01 01:00", NOW) == 1748739600  # UTC
    assert parse_time("1748739600.5", NOW) == 1748739600.5 and parse_time("now", NOW) == NOW

    def args(**given: str | None) -> argparse.Namespace:
        return argparse.Namespace(**{"start": None, "end": None, "since": None, **given})

    assert window(args(), NOW) == (NOW - 7200, NOW)  # the default: the last 2 h
    assert window(args(since="30m", end="1750000000"), NOW) == (NOW - 1800, NOW)
    assert window(args(start="1749990000"), NOW) == (1749990000, NOW)
    assert default_min_duration(7200, 15) == 300 and default_min_duration(20, 1) == 3
    assert default_min_duration(86400, 60) == 300 and default_min_duration(600, 15) == 45


def test_node_matcher_escapes_regex_and_promql() -> None:
    assert regex_escape("gpu-node.7") == r"gpu\-node\.7"
    from exporter.diagnose.dataset import Scope

    assert Scope(node='a"b').node_matchers() == ['instance=~"a\\\\\\"b(:[0-9]+)?"']
    assert Scope(endpoint="llama").endpoint_matchers() == ['endpoint="llama"']


def test_help_lists_diagnose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "diagnose" in capsys.readouterr().out
