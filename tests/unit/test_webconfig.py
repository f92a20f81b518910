"""The exporter-toolkit web config file: what it accepts, what it refuses (one line naming the field, no
secret quoted), and reloading. TLS contexts from real certificates are tested in
tests/integration/test_web_listener.py (they need the openssl command)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from exporter.config import ConfigError
from exporter.webconfig import (
    CIPHER_SUITES,
    EXTRA_HEADERS,
    WebConfigError,
    WebConfigWatcher,
    allowed_san,
    load_web_config,
    parse_go_duration,
)

# bcrypt hashes (cost 4, fast) of "right" and "other"
HASH_RIGHT = "$2b$04$10A97DjUGMmCBZ5kiESCkuXpBiCv4HSqNuD8lbWAZW8owDDegtHtS"
HASH_OTHER = "$2b$04$7Ivk2wr3kI/LXHwNa7taHOEFPo8Es2hGQaH7loblTVHRFJYMRfxgG"


TLS = "tls_server_config: {cert_file: a.crt, key_file: a.key, "


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(WebConfigError) as raised:
        load_web_config(write(tmp_path, text))
    message = str(raised.value)
    assert "\n" not in message
    assert isinstance(raised.value, ConfigError)  # the CLI's exit 2
    return message


def test_hashes_used_here_are_what_they_claim() -> None:
    import bcrypt

    assert bcrypt.checkpw(b"right", HASH_RIGHT.encode())
    assert bcrypt.checkpw(b"other", HASH_OTHER.encode())


def test_an_empty_file_is_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, ""))
    assert config.tls is None and config.ssl_context is None
    assert not config.users and config.headers == () and config.rate_limit is None
    assert config.summary() == "plain HTTP, no auth"


def test_users_headers_and_rate_limit(tmp_path: Path) -> None:
    config = load_web_config(
        write(
            tmp_path,
            f"""
basic_auth_users:
  alice: {HASH_RIGHT}
  bob: '{HASH_OTHER}'
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Content-Security-Policy: "default-src 'none'"
    Strict-Transport-Security: ""
rate_limit:
  interval: 1m30s
  burst: 5
""",
        )
    )
    assert dict(config.users) == {"alice": HASH_RIGHT.encode(), "bob": HASH_OTHER.encode()}
    assert config.headers == (
        (b"x-frame-options", b"deny"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'none'"),
    )  # a blank header is unset, as in the toolkit
    assert config.rate_limit is not None
    assert (config.rate_limit.interval_seconds, config.rate_limit.burst) == (90.0, 5)
    assert config.summary() == "plain HTTP, basic auth (2 users), 3 extra headers, rate limit 5 per 90 s"
    assert HASH_RIGHT not in repr(config)


def test_rate_limit_interval_zero_turns_it_off(tmp_path: Path) -> None:
    assert load_web_config(write(tmp_path, "rate_limit: {interval: 0, burst: 3}\n")).rate_limit is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("10us", 1e-5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "s", "-1s", "1s2", "one"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_config: {}\n", "tls_config: unknown field (allowed: tls_server_config, http_server_config"),
        ("- a\n", "expected a mapping, got list"),
        ("a: [\n", "invalid YAML"),
        (
            "tls_server_config: {cert_file: a.crt, keyfile: a.key}\n",
            "tls_server_config.keyfile: unknown field",
        ),
        ("tls_server_config: {cert_file: a.crt}\n", "tls_server_config: missing one of key or key_file"),
        ("tls_server_config: {key_file: a.key}\n", "tls_server_config: missing one of cert or cert_file"),
        (
            "tls_server_config: {cert_file: a.crt, cert: x, key_file: a.key}\n",
            "tls_server_config.cert: given together with cert_file",
        ),
        (
            TLS + "client_auth_type: Sometimes}\n",
            "tls_server_config.client_auth_type: expected one of NoClientCert, RequestClientCert, "
            "RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert (got 'Sometimes')",
        ),
        (
            TLS + "client_auth_type: RequireAnyClientCert}\n",
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported: Python's ssl module "
            "cannot require a client certificate without verifying it",
        ),
        (
            TLS + "client_auth_type: RequireClientCert}\n",
            "RequireClientCert is not supported",
        ),
        (
            TLS + "client_ca_file: ca.crt}\n",
            "tls_server_config.client_auth_type: client CAs are configured without a client auth policy",
        ),
        (
            TLS + "client_allowed_sans: [x]}\n",
            "tls_server_config.client_allowed_sans: needs client_auth_type VerifyClientCertIfGiven",
        ),
        (
            TLS + "min_version: TLS14}\n",
            "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13 (got 'TLS14')",
        ),
        (
            TLS + "min_version: TLS13, max_version: TLS12}\n",
            "tls_server_config.min_version: is above max_version",
        ),
        (
            TLS + "cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]}\n",
            "tls_server_config.cipher_suites[0]: unknown cipher 'TLS_RSA_WITH_RC4_128_SHA'",
        ),
        (
            TLS + "curve_preferences: [X25519, CurveP256]}\n",
            "tls_server_config.curve_preferences: lists several curves; Python's ssl module can set one",
        ),
        (
            TLS + "curve_preferences: [P256]}\n",
            "tls_server_config.curve_preferences[0]: unknown curve 'P256'",
        ),
        (
            TLS + "prefer_server_cipher_suites: yes please}\n",
            "tls_server_config.prefer_server_cipher_suites: expected true or false",
        ),
        (
            "http_server_config: {headers: {Server: tpw}}\n",
            "http_server_config.headers.Server: HTTP header 'Server' can not be configured (allowed: "
            + ", ".join(EXTRA_HEADERS),
        ),
        (
            "http_server_config: {headers: {X-Frame-Options: allow}}\n",
            "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin (got 'allow')",
        ),
        (
            'http_server_config: {headers: {Content-Security-Policy: "a\\r\\nSet-Cookie: x"}}\n',
            "http_server_config.headers.Content-Security-Policy: control or non-ASCII characters",
        ),
        ("http_server_config: {http3: true}\n", "http_server_config.http3: unknown field"),
        ("rate_limit: {interval: 1d, burst: 1}\n", "rate_limit.interval: expected a duration such as 1s"),
        ("rate_limit: {interval: 1s, burst: -1}\n", "rate_limit.burst: expected a whole number ≥ 0 (got -1)"),
        ("basic_auth_users: [alice]\n", "basic_auth_users: expected a mapping of user: bcrypt hash"),
    ],
)
def test_refused_with_one_line_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    message = error(tmp_path, text)
    assert message.startswith(f"web config file {tmp_path / 'web-config.yml'}")
    assert expected in message, message


def test_a_bad_password_hash_is_named_by_user_and_never_quoted(tmp_path: Path) -> None:
    secret = "$2y$10$tooShortToBeAHash"
    message = error(tmp_path, f"basic_auth_users:\n  alice: '{HASH_RIGHT}'\n  bob: '{secret}'\n")
    assert "basic_auth_users.bob: not a bcrypt hash" in message
    assert secret not in message and "tooShort" not in message
    message = error(tmp_path, "basic_auth_users:\n  carol: plain-text-password\n")
    assert "basic_auth_users.carol: not a bcrypt hash" in message and "plain-text-password" not in message


def test_an_inline_key_of_the_wrong_type_is_not_quoted(tmp_path: Path) -> None:
    message = error(tmp_path, "tls_server_config: {cert_file: a.crt, key: [secret-key-material]}\n")
    assert "tls_server_config.key: expected a string, got list" in message
    assert "secret-key-material" not in message


def test_tls_files_are_relative_to_the_web_config_file_and_missing_ones_named(tmp_path: Path) -> None:
    message = error(tmp_path, "tls_server_config: {cert_file: certs/server.crt, key_file: server.key}\n")
    assert message.endswith(
        f"tls_server_config.cert_file: cannot read {tmp_path / 'certs' / 'server.crt'}: No such file or "
        "directory"
    )


def test_files_that_are_no_pem_are_refused_without_quoting_them(tmp_path: Path) -> None:
    (tmp_path / "server.crt").write_text("not a certificate, but a secret\n")
    (tmp_path / "server.key").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nsecret\n")
    text = "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
    message = error(tmp_path, text)
    assert message.endswith("tls_server_config.cert_file: no PEM certificate in it")
    (tmp_path / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nsecret\n-----END CERTIFICATE-----\n")
    message = error(tmp_path, text)
    assert "tls_server_config.key_file: the key is encrypted" in message
    assert "secret" not in message


def test_every_go_cipher_suite_maps_to_one_this_openssl_has() -> None:
    for go_name, openssl_name in CIPHER_SUITES.items():
        if openssl_name is None:  # TLS 1.3: not configurable, in Go as in Python
            assert go_name.startswith("TLS_") and "_WITH_" not in go_name
            continue
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers(openssl_name)
        names = {cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] != "TLSv1.3"}
        assert names == {openssl_name}, go_name


def test_allowed_sans_match_dns_ip_email_and_uri() -> None:
    from exporter.webconfig import _parse_tls

    tls = _parse_tls(
        Path("/etc/web.yml"),
        {
            "cert_file": "a",
            "key_file": "b",
            "client_ca_file": "c",
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_allowed_sans": ["prometheus.example", "::1", "ops@example.org", "spiffe://x/prom"],
        },
    )
    assert tls is not None
    assert tls.cert_file == Path("/etc/a")

    def cert(*sans: tuple[str, str]) -> dict[str, object]:
        return {"subject": ((("commonName", "x"),),), "subjectAltName": sans}

    assert allowed_san(tls, cert(("DNS", "other"), ("DNS", "prometheus.example")))
    assert allowed_san(tls, cert(("IP Address", "0:0:0:0:0:0:0:1\n")))  # how ssl writes IPv6 SANs
    assert allowed_san(tls, cert(("email", "ops@example.org")))
    assert allowed_san(tls, cert(("URI", "spiffe://x/prom")))
    assert not allowed_san(tls, cert(("DNS", "prometheus.example.evil")))
    assert not allowed_san(tls, cert(("IP Address", "127.0.0.1")))
    assert not allowed_san(tls, {})  # no certificate at all


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watcher_reloads_changed_files_at_most_every_few_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"basic_auth_users: {{alice: '{HASH_RIGHT}'}}\n")
    clock = Clock()
    watcher = WebConfigWatcher(path, clock=clock, check_seconds=3.0)
    assert set(watcher.current.users) == {"alice"}

    path.write_text(f"basic_auth_users: {{bob: '{HASH_OTHER}'}}\n# longer, so the size changes too\n")
    clock.now += 1.0
    assert not watcher.check()  # not looked at before 3 s
    clock.now += 2.5
    with caplog.at_level(logging.INFO, logger="exporter.webconfig"):
        assert watcher.check()
    assert set(watcher.current.users) == {"bob"}
    assert f"web config {path} reloaded: plain HTTP, basic auth (1 user)" in caplog.text
    clock.now += 5
    assert not watcher.check()  # unchanged


def test_watcher_keeps_the_previous_config_when_the_new_file_is_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"basic_auth_users: {{alice: '{HASH_RIGHT}'}}\n")
    clock = Clock()
    watcher = WebConfigWatcher(path, clock=clock, check_seconds=3.0)
    path.write_text("basic_auth_users: {alice: not-a-hash}\n")
    with caplog.at_level(logging.INFO, logger="exporter.webconfig"):
        for _ in range(3):
            clock.now += 5
            assert not watcher.check()
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1  # once per change, not once per look
    assert errors[0].getMessage() == (
        f"web config file {path}: basic_auth_users.alice: not a bcrypt hash ($2y$10$… as `htpasswd -nBC 10` "
        "makes); still serving with the previous web config"
    )
    assert set(watcher.current.users) == {"alice"}
    path.write_text(f"basic_auth_users: {{alice: '{HASH_OTHER}'}}\n")
    clock.now += 5
    assert watcher.check()
    assert watcher.current.users["alice"] == HASH_OTHER.encode()


def test_watcher_keeps_plain_http_when_the_new_tls_files_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "")
    clock = Clock()
    watcher = WebConfigWatcher(path, clock=clock, check_seconds=3.0)
    path.write_text("tls_server_config: {cert_file: a.crt, key_file: a.key}\n")
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="exporter.webconfig"):
        assert not watcher.check()
    assert watcher.current.tls is None
    assert f"tls_server_config.cert_file: cannot read {tmp_path / 'a.crt'}" in caplog.text


def test_no_file_means_no_checks() -> None:
    watcher = WebConfigWatcher(None)
    assert watcher.current.summary() == "plain HTTP, no auth"
    assert not watcher.check()


def test_flags_environment_and_file_set_the_listener_settings(tmp_path: Path) -> None:
    from exporter.cli import build_parser, flag_overrides
    from exporter.config import load_config

    flags = "demo --web.listen-address 127.0.0.1:9999 --web.config.file web.yml --web.max-requests 5"
    args = build_parser().parse_args([*flags.split(), "--web.max-connections", "100"])
    config = load_config(None, environ={}, overrides=flag_overrides(args))
    assert config.listen_address == "127.0.0.1:9999"  # --web.listen-address is --listen-address
    assert (config.web_config_file, config.web_max_requests, config.web_max_connections) == (
        Path("web.yml"),
        5,
        100,
    )
    defaults = load_config(None, environ={})
    assert (defaults.web_config_file, defaults.web_max_requests, defaults.web_max_connections) == (
        None,
        40,
        None,
    )
    environ = {"TPW_WEB_CONFIG_FILE": "/etc/tpw/web.yml", "TPW_WEB_MAX_REQUESTS": "0"}
    from_env = load_config(None, environ=environ)
    assert (from_env.web_config_file, from_env.web_max_requests) == (Path("/etc/tpw/web.yml"), 0)
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("web_config_file: web.yml\nweb_max_connections: 64\n")
    from_file = load_config(yaml_file, environ={})
    assert (from_file.web_config_file, from_file.web_max_connections) == (Path("web.yml"), 64)
    with pytest.raises(ConfigError, match="web_max_requests: Input should be greater than or equal to 0"):
        load_config(None, environ={"TPW_WEB_MAX_REQUESTS": "-1"})
    with pytest.raises(ConfigError, match="web_max_connections: Input should be greater than or equal to 1"):
        load_config(None, environ={"TPW_WEB_MAX_CONNECTIONS": "0"})
