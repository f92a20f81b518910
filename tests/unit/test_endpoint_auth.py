"""Endpoint credentials against real HTTP servers on loopback (bearer token, basic auth, extra headers, files
rotated mid-run), the configuration's refusals, and redaction: no secret on any surface — the metrics, the
snapshot JSON, the log at DEBUG, the error messages. TLS (mTLS, CAs, server_name) against a real TLS server:
tests/integration/test_endpoint_tls.py; the exporter as a process: tests/integration/test_endpoint_secrets.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from pathlib import Path

import pytest
from engine_server import engine_server

from exporter.config import ConfigError, EndpointConfig, load_config
from exporter.daemon import Daemon
from exporter.model import EndpointSample
from exporter.redact import redact_settings, redact_text, redact_url
from exporter.render.endpoints import endpoint_families
from exporter.render.exposition import Renderer
from exporter.snapshot_json import snapshot_json
from exporter.sources.endpoints import EndpointsSource

PAGE = (
    b'vllm:generation_tokens_total{model_name="m"} 7\n'
    b'vllm:prompt_tokens_total{model_name="m"} 9\n'
    b'vllm:num_requests_running{model_name="m"} 1\n'
)
TOKEN = "tok-4f1c9e2a7b"
PASSWORD = "pw-8d3e1f0c"


def endpoint(url: str, **settings: object) -> EndpointConfig:
    """Through load_config, as a file would give it (validation included)."""
    config = load_config(
        environ={}, overrides={"endpoints": [{"name": "e", "url": url, "engine": "vllm", **settings}]}
    )
    return config.endpoints[0]


def scrape_n(config: EndpointConfig, count: int = 1, between: object = None) -> list[EndpointSample]:
    """`count` scrapes with one source; `between(i)` runs before scrape i > 0."""

    async def run() -> list[EndpointSample]:
        source = EndpointsSource([config])
        try:
            samples = []
            for index in range(count):
                if index and callable(between):
                    between(index)
                samples.append((await source.collect()).endpoints[0])
            return samples
        finally:
            await source.close()

    return asyncio.run(run())


def errors(sample: EndpointSample) -> dict[str, int]:
    return dict(sample.errors_total)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# -- bearer token, basic auth, extra headers ---------------------------------------------------------------


def test_a_bearer_token_is_sent_and_a_wrong_or_missing_one_is_up_0_with_the_http_status() -> None:
    with engine_server(PAGE, required_headers={"Authorization": f"Bearer {TOKEN}"}) as server:
        (right,) = scrape_n(endpoint(server.url, authorization={"credentials": TOKEN}))
        (wrong,) = scrape_n(endpoint(server.url, authorization={"credentials": "tok-wrong"}))
        (missing,) = scrape_n(endpoint(server.url))
        (scheme,) = scrape_n(endpoint(server.url, authorization={"type": "Token", "credentials": TOKEN}))
    assert right.up and right.error is None
    for sample in (wrong, missing, scheme):
        assert not sample.up and errors(sample) == {"http_status": 1}
        assert sample.error == f"HTTP 401 from {server.url} (credentials missing or wrong?)"


def test_basic_auth_from_the_config_and_from_a_file(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(f"{PASSWORD}\n")  # the newline an editor adds is cut
    with engine_server(PAGE, required_headers={"Authorization": basic("prom", PASSWORD)}) as server:
        (inline,) = scrape_n(endpoint(server.url, basic_auth={"username": "prom", "password": PASSWORD}))
        (from_file,) = scrape_n(
            endpoint(server.url, basic_auth={"username": "prom", "password_file": str(password_file)})
        )
        (wrong,) = scrape_n(endpoint(server.url, basic_auth={"username": "prom", "password": "nope"}))
    assert inline.up and from_file.up
    assert not wrong.up and errors(wrong) == {"http_status": 1} and "HTTP 401" in (wrong.error or "")


def test_extra_headers_from_values_secrets_and_files(tmp_path: Path) -> None:
    (tmp_path / "tenant").write_text("team-a\n")
    headers = {
        "X-Api-Key": {"secrets": [TOKEN]},
        "X-Scope-OrgID": {"files": [str(tmp_path / "tenant")]},
        "X-Trace": {"values": ["one", "two"]},
    }
    with engine_server(PAGE, required_headers={"X-Api-Key": TOKEN}) as server:
        (sample,) = scrape_n(endpoint(server.url, http_headers=headers))
        seen = server.behaviour.seen_headers
    assert sample.up, sample.error
    assert ("X-Scope-OrgID", "team-a") in seen
    assert [value for name, value in seen if name == "X-Trace"] == ["one", "two"]
    assert ("Accept-Encoding", "gzip, deflate") in seen  # the exporter's own headers are kept


def test_a_credentials_file_rotated_mid_run_is_read_again(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-first-0001")
    required = {"Authorization": "Bearer tok-first-0001"}
    with engine_server(PAGE, required_headers=required) as server:

        def rotate(index: int) -> None:
            if index == 1:  # the engine's key is rotated, and the file follows (an atomic rename)
                required["Authorization"] = "Bearer tok-second-0002"
                new = tmp_path / "token.new"
                new.write_text("tok-second-0002\n")
                os.replace(new, token_file)
            if index == 2:  # written in place, same size: the change time still shows it
                required["Authorization"] = "Bearer tok-third--0003"
                token_file.write_text("tok-third--0003\n")

        samples = scrape_n(
            endpoint(server.url, authorization={"credentials_file": str(token_file)}), 3, rotate
        )
    assert [sample.up for sample in samples] == [True, True, True], [s.error for s in samples]


def test_a_missing_or_bad_credentials_file_is_up_0_auth_config_naming_the_file_never_its_contents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    with engine_server(PAGE, required_headers={"Authorization": f"Bearer {TOKEN}"}) as server:
        config = endpoint(server.url, name="guarded", authorization={"credentials_file": str(token_file)})

        def change(index: int) -> None:
            if index == 1:
                token_file.write_text(TOKEN)  # it appears: picked up
            elif index == 2:
                token_file.write_text(f"{TOKEN}\nsecond line {PASSWORD}\n")  # a line break inside
            elif index == 3:
                token_file.write_bytes(b"\xff\xfe" + TOKEN.encode())
            elif index == 4:
                token_file.write_text("   \n")

        with caplog.at_level(logging.DEBUG):
            samples = scrape_n(config, 5, change)
        requests = server.behaviour.requests
    missing, found, two_lines, binary, empty = samples
    assert found.up
    assert requests == 1  # no request is made without the credentials
    for sample, problem in (
        (missing, "No such file or directory"),
        (two_lines, "holds a line break or NUL"),
        (binary, "not UTF-8 text"),
        (empty, "empty"),
    ):
        assert not sample.up
        assert sample.error == f"authorization.credentials_file {token_file}: {problem}"
    assert errors(empty) == {"auth_config": 4}
    lines = [record.getMessage() for record in caplog.records]
    down = [line for line in lines if "endpoint guarded is down" in line]
    assert len(down) == 2 and str(token_file) in down[0]  # one line per change of state, naming the file
    assert not any(TOKEN in line or PASSWORD in line for line in lines)


# -- the configuration's refusals: one line naming the field, never the secret ----------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"authorization": {"credentials": TOKEN}, "basic_auth": {"username": "u", "password": PASSWORD}},
            "endpoints.0: `authorization` and `basic_auth` are mutually exclusive; set one",
        ),
        (
            {"authorization": {"credentials": TOKEN, "credentials_file": "/run/token"}},
            "endpoints.0.authorization: `credentials` and `credentials_file` are mutually exclusive; set one",
        ),
        (
            {"basic_auth": {"username": "u", "password": PASSWORD, "password_file": "/run/pw"}},
            "endpoints.0.basic_auth: `password` and `password_file` are mutually exclusive; set one",
        ),
        ({"authorization": {}}, "endpoints.0.authorization: needs `credentials` or `credentials_file`"),
        (
            {"authorization": {"type": "Basic", "credentials": TOKEN}},
            "endpoints.0.authorization.type: Basic is set with `basic_auth` (username, password), not "
            "`authorization`",
        ),
        (
            {"authorization": {"credentials": f"{TOKEN}\r\nX-Evil: 1"}},
            "endpoints.0.authorization.credentials: holds a line break or NUL",
        ),
        ({"basic_auth": {"username": "u", "password": 12345678}}, "endpoints.0.basic_auth.password: Input"),
        ({"http_headers": {"X-Key": {"secrets": [12345678]}}}, "endpoints.0.http_headers.X-Key.secrets.0: "),
        ({"http_headers": {"Host": {"values": ["evil"]}}}, "endpoints.0.http_headers: setting header 'Host'"),
        (
            {"http_headers": {"authorization": {"secrets": [TOKEN]}}},
            "endpoints.0.http_headers: setting header 'authorization' is not allowed (use `authorization` or",
        ),
        (
            {"http_headers": {"accept-encoding": {"values": ["br"]}}},
            "endpoints.0.http_headers: setting header 'accept-encoding'",
        ),
        ({"http_headers": {"X-A": {}}}, "endpoints.0.http_headers.X-A: a header needs at least one of"),
        (
            {"tls_config": {"cert_file": "/c.crt"}},
            "endpoints.0.tls_config: `cert_file` needs `key_file` (a client certificate and its key)",
        ),
        (
            {"tls_config": {"ca_file": "/ca.crt"}},
            "endpoints.0: `tls_config` is only used with an https:// url",
        ),
        (
            {"url": "https://h:1/m", "tls_config": {"min_version": "TLS13", "max_version": "TLS12"}},
            "endpoints.0.tls_config: min_version TLS13 is newer than max_version TLS12",
        ),
        (
            {"url": f"http://prom:{PASSWORD}@h:1/m", "basic_auth": {"username": "prom"}},
            "endpoints.0: the url's user info and `basic_auth` both set credentials; keep one",
        ),
        (
            {"url": f"http://prom:{PASSWORD[:4]}/{PASSWORD[4:]}@h:1/m"},
            "endpoints.0.url: expected an http:// or https:// URL such as http://localhost:8000/metrics: an "
            "'@' in the path; percent-encode it as %40 (a password's '/' as %2F) (got 'http://<redacted>@h:1/m')",
        ),
        (
            {"url": f"http://prom:{PASSWORD[:4]}?{PASSWORD[4:]}@h:1/m"},
            "endpoints.0.url: the URL's port must be 1..65535, got a value not shown",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line_without_the_secret(
    settings: dict[str, object], expected: str
) -> None:
    entry = {"name": "e", "url": "http://h:1/m", **settings}
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides={"endpoints": [entry]})
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    assert TOKEN not in message and PASSWORD not in message
    assert PASSWORD[:4] not in message and PASSWORD[4:] not in message and "12345678" not in message


def test_secrets_are_not_in_the_config_objects_repr() -> None:
    config = endpoint(
        "http://h:1/m", authorization={"credentials": TOKEN}, http_headers={"X-Key": {"secrets": [PASSWORD]}}
    )
    assert TOKEN not in repr(config) and PASSWORD not in repr(config)


# -- redaction: one function, every surface ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@h:8000/metrics?token=abc&x&y=2#frag",
         "http://<redacted>@h:8000/metrics?token=<redacted>&<redacted>&y=<redacted>#<redacted>"),
        ("http://[::1]:8000/metrics", "http://[::1]:8000/metrics"),  # the brackets stay
        ("https://u:pw@[fd00::1]:8443/metrics?token=t", "https://<redacted>@[fd00::1]:8443/metrics?token=<redacted>"),
        ("http://h/metrics", "http://h/metrics"),
        ("http://u:p/w@h:1/m?email=a@b", "http://<redacted>@h:1/m?email=<redacted>"),  # '/' in a password
        ("http://u:p?w@h:1/m", "http://<redacted>@h:1/m"),  # '?' in a password
        ("http://h:1/metrics?email=a@b.c", "http://h:1/metrics?email=<redacted>"),  # '@' in a query value
        ("not a url", "not a url"),
    ],
)  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # already redacted: unchanged


def test_redact_text_finds_urls_in_messages_quoted_or_not() -> None:
    text = (
        f"got 'http://u:{PASSWORD}@h/m?token={TOKEN}', then \"https://h/?k={TOKEN}\" and http://h/?a={TOKEN}"
    )
    shown = redact_text(text)
    assert TOKEN not in shown and PASSWORD not in shown
    assert shown.startswith("got 'http://<redacted>@h/m?token=<redacted>', then \"https://h/?k=<redacted>\"")
    already = "cannot connect to http://h:1/m?token=<redacted>: refused (see http://h/, or http://h/?a=1.)"
    assert redact_text(already) == already.replace("?a=1.", "?a=<redacted>.")


def test_check_config_dump_redacts_every_secret() -> None:
    data = {
        "endpoints": [
            {
                "url": f"http://h/m?token={TOKEN}",
                "authorization": {"type": "Bearer", "credentials": TOKEN, "credentials_file": None},
                "basic_auth": None,
                "http_headers": {"X-Key": {"values": ["plain"], "secrets": [PASSWORD], "files": []}},
            }
        ],
        "profiling": {"url": f"http://u:{PASSWORD}@dcgm:9400/metrics"},
    }
    assert redact_settings(data)
    assert TOKEN not in str(data) and PASSWORD not in str(data)
    assert data["endpoints"][0]["http_headers"]["X-Key"] == {  # type: ignore[index]
        "values": ["plain"],
        "secrets": ["<redacted>"],
        "files": [],
    }
    assert not redact_settings({"endpoints": [{"url": "http://h/m", "authorization": None}]})


def test_no_secret_on_any_surface(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of endpoint failure and success, with secrets in URLs, settings and files: the metrics (both
    formats), the snapshot JSON, every log line at DEBUG (httpx's included) and every error hold none."""
    secrets = [f"url-token-{i}" for i in range(4)] + [f"url-pass-{i}" for i in range(2)]
    secrets += ["cred-token-0", "file-token-0", "basic-pass-0", "header-secret-0"]
    (tmp_path / "token").write_text("file-token-0\n")
    with engine_server(b"") as dead:
        dead_url = dead.url  # closed from here on: connection refused
    with (
        engine_server(PAGE, required_headers={"Authorization": "Bearer cred-token-0"}) as guarded,
        engine_server(PAGE, required_headers={"Authorization": "Bearer file-token-0"}) as rotated,
        engine_server(
            PAGE, status=302, headers={"Location": "http://elsewhere:1/m?token=url-token-3"}
        ) as away,
    ):
        port = guarded.port
        token_file, missing = str(tmp_path / "token"), str(tmp_path / "missing-token")
        configs = [
            {"name": "ok", "url": f"{guarded.url}?token=url-token-0",
             "authorization": {"credentials": "cred-token-0"}},
            {"name": "file", "url": rotated.url, "authorization": {"credentials_file": token_file}},
            {"name": "wrong", "url": f"http://127.0.0.1:{port}/metrics?token=url-token-1",
             "basic_auth": {"username": "u", "password": "basic-pass-0"},
             "http_headers": {"X-Key": {"secrets": ["header-secret-0"]}}},
            {"name": "gone", "url": dead_url.replace("//", "//u:url-pass-0@") + "?token=url-token-2"},
            {"name": "away", "url": away.url.replace("//", "//u:url-pass-1@")},
            {"name": "nofile", "url": guarded.url, "authorization": {"credentials_file": missing}},
        ]  # fmt: skip
        config = load_config(environ={}, overrides={"endpoints": [{"engine": "vllm", **c} for c in configs]})

        async def run() -> tuple[Daemon, list[bytes]]:
            source = EndpointsSource(config.endpoints)
            daemon = Daemon([source], Renderer(extra=[endpoint_families]), interval=1.0)
            try:
                outputs = []
                for _ in range(2):
                    exposition = await daemon.tick()
                    outputs += [exposition.text, exposition.openmetrics, snapshot_json(exposition.snapshot)]
                return daemon, outputs
            finally:
                await daemon.close()

        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx"):
            daemon, outputs = asyncio.run(run())
    samples = {sample.name: sample for sample in daemon.latest.snapshot.endpoints}
    assert samples["ok"].up and samples["file"].up, (samples["ok"].error, samples["file"].error)
    assert not samples["wrong"].up and "HTTP 401" in (samples["wrong"].error or "")
    assert dict(samples["gone"].errors_total) == {"connect": 2}
    gone = dead_url.replace("//", "//<redacted>@") + "?token=<redacted>"
    assert (samples["gone"].error or "").startswith(f"cannot connect to {gone}: ")
    assert dict(samples["away"].errors_total) == {"redirect": 2}
    assert dict(samples["nofile"].errors_total) == {"auth_config": 2}
    assert f'url="http://127.0.0.1:{port}/metrics?token=<redacted>"' in outputs[0].decode()
    assert any("HTTP Request: GET" in record.getMessage() for record in caplog.records)  # httpx's own lines
    surfaces = [output.decode() for output in outputs]
    surfaces += [record.getMessage() for record in caplog.records]
    surfaces += [sample.error or "" for sample in samples.values()]
    surfaces += [logging.Formatter().format(record) for record in caplog.records]  # with any traceback
    for surface in surfaces:
        for secret in secrets:
            assert secret not in surface, (secret, surface)


def test_a_message_quoting_a_secret_value_is_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: whatever quotes a secret the endpoint sends (a library's error, a bug's traceback),
    the sample's error and the log show `<redacted>` instead: values from the config and from files."""
    (tmp_path / "password").write_text(PASSWORD)
    config = endpoint(
        "http://127.0.0.1:1/metrics",
        basic_auth={"username": "prom", "password_file": str(tmp_path / "password")},
        http_headers={"X-Key": {"secrets": [TOKEN]}},
    )
    encoded = base64.b64encode(f"prom:{PASSWORD}".encode()).decode()
    with engine_server(PAGE) as server:
        source = EndpointsSource([config.model_copy(update={"url": server.url})])

        async def explode(job: object, timeout: float) -> None:
            raise RuntimeError(f"sent {TOKEN} and Basic {encoded} for prom:{PASSWORD}")

        monkeypatch.setattr(source.scrapers[0].worker, "interpret", explode)

        async def run() -> EndpointSample:
            try:
                return (await source.collect()).endpoints[0]
            finally:
                await source.close()

        with caplog.at_level(logging.DEBUG, logger="exporter.sources.endpoints"):
            sample = asyncio.run(run())
    assert sample.error == "RuntimeError: sent <redacted> and Basic <redacted> for prom:<redacted>"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "scrape failed unexpectedly" in logged and "RuntimeError: sent <redacted>" in logged
    assert TOKEN not in logged and PASSWORD not in logged and encoded not in logged


def test_the_dcgm_exporter_pages_url_is_redacted_in_its_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """profiling.url is shown through the same redaction as an endpoint's URL."""
    from exporter.sources.dcgm_exporter import DcgmExporterProfiler

    with engine_server(b"") as dead:
        url = dead.url.replace("//", f"//prom:{PASSWORD}@") + f"?token={TOKEN}"
    reader = DcgmExporterProfiler(url, timeout_seconds=0.5)

    async def run() -> str | None:
        try:
            return (await reader.read(["GPU-0"])).status.error
        finally:
            if reader._client is not None:
                await reader._client.aclose()

    with caplog.at_level(logging.DEBUG):
        error = asyncio.run(run()) or ""
    assert error.startswith(f"http://<redacted>@127.0.0.1:{dead.port}/metrics?token=<redacted>: ConnectError")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert TOKEN not in error + logged and PASSWORD not in error + logged
