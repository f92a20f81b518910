"""Bad input (issue 13): every wrong config is one line naming the field or the file, never the file's text.

Endpoint URLs (scheme, host, port 1..65535), the listen address (IPv4, bracketed IPv6, host name, port),
GPU lists (indices 0..1023, GPU-/MIG- UUIDs, none twice), YAML that is not UTF-8, too big, too deep or an
alias bomb, files that are not config files (secrets must not be echoed), check-config's redaction of
endpoint URLs, a listen address that cannot be bound, and the demo engine's quiet disconnects.
The same as processes (exit status 2, nothing logged as listening): tests/integration/test_bad_input.py.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from helpers import write_config as write

import exporter.config as config_module
from exporter.config import (
    MAX_CONFIG_FILE_BYTES,
    MAX_ERROR_CHARS,
    Config,
    ConfigError,
    load_config,
    one_line,
    redact_url,
    split_listen_address,
)

SECRETS = ("hunter2", "sk-live-0123456789abcdef", "Qz9salt", "s3cr3t-alias", "tok-abc123")


def config_error(text: str, environ: dict[str, str] | None = None, tmp_path: Path | None = None) -> str:
    assert tmp_path is not None
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ or {})
    message = str(caught.value)
    assert "\n" not in message and len(message) <= MAX_ERROR_CHARS
    return message


def endpoint(url: str, **more: object) -> str:
    extra = "".join(f", {key}: {value}" for key, value in more.items())
    return f"endpoints:\n  - {{name: a, url: '{url}'{extra}}}\n"


# -- endpoint URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:99999/metrics", "endpoints.0.url: the URL's port must be 1..65535, got 99999"),
        ("http://h:0/metrics", "endpoints.0.url: the URL's port must be 1..65535, got 0"),
        ("http://h:8o/metrics", "endpoints.0.url: the URL's port must be 1..65535, got '8o'"),
        ("ftp://h:21/metrics", "endpoints.0.url: expected an http:// or https:// URL"),
        ("localhost:8000/metrics", "endpoints.0.url: expected an http:// or https:// URL"),
        ("http:///metrics", "the URL has no host"),
        ("http://:8000/metrics", "the URL has no host"),
        ("http://256.1.1.1:8000/metrics", "'256.1.1.1' is not an IPv4 address"),
        ("http://bad_host-.example:80/m", "is not an IP address or a host name"),
        ("http://::1:8000/metrics", "an IPv6 host is written in brackets"),
        ("http://[::zz]:8000/metrics", "an IPv6 host is an address in brackets"),
        ("http://h :80/metrics", "no spaces or control characters"),
    ],
)
def test_bad_endpoint_urls_are_refused_naming_the_field(tmp_path: Path, url: str, expected: str) -> None:
    assert expected in config_error(endpoint(url), tmp_path=tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/metrics",
        "https://engine.internal/metrics",
        "http://[::1]:8000/metrics",
        "http://10.0.0.7:65535/metrics",
        "http://user:pass@h:1/metrics?token=x",
        "http://host.docker.internal:8000/metrics",
    ],
)
def test_good_endpoint_urls_pass(tmp_path: Path, url: str) -> None:
    assert load_config(write(tmp_path, endpoint(url)), {}).endpoints[0].url == url


def test_a_bad_url_is_quoted_without_its_credentials(tmp_path: Path) -> None:
    message = config_error(
        endpoint("http://admin:hunter2@256.0.0.1:8000/metrics?token=tok-abc123"), tmp_path=tmp_path
    )
    assert message == (
        "endpoints.0.url: '256.0.0.1' is not an IPv4 address (four numbers 0..255 joined by dots) "
        "(got 'http://<redacted>@256.0.0.1:8000/metrics?token=<redacted>')"
    )


# -- the listen address ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("256.1.1.1:9835", "'256.1.1.1' is not an IPv4 address"),
        ("127.1:9835", "'127.1' is not an IPv4 address"),
        ("::1:9835", "an IPv6 address is written in brackets"),
        ("[::1:9835", "expected an IPv6 address in brackets"),
        ("[127.0.0.1]:9835", "expected an IPv6 address in brackets"),
        ("[]:9835", "expected an IPv6 address in brackets"),
        ("bad host:9835", "is not an IP address or a host name"),
        ("*:9835", "is not an IP address or a host name"),
        ("-lead.example:9835", "is not an IP address or a host name"),
        ("localhost:65536", "port must be 0..65535, got 65536"),
        ("localhost", "expected host:port"),
    ],
)
def test_bad_listen_addresses_are_refused_at_config_time(address: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TPW_LISTEN_ADDRESS": address})
    assert str(caught.value).startswith("listen_address: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("0.0.0.0:9835", "0.0.0.0", 9835),
        (":9835", "0.0.0.0", 9835),
        ("[::]:9835", "::", 9835),
        ("[fe80::1]:80", "fe80::1", 80),
        ("localhost:0", "localhost", 0),
        ("node-7.cluster.local.:9100", "node-7.cluster.local.", 9100),
    ],
)
def test_good_listen_addresses(address: str, host: str, port: int) -> None:
    assert split_listen_address(address) == (host, port)


# -- GPU lists ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nvml:\n  devices: [0, 99999]\n", "nvml.devices: GPU indices are 0..1023, got 99999"),
        ("nvml:\n  devices: [-1]\n", "nvml.devices: GPU indices are 0..1023, got -1"),
        ("nvml:\n  devices: [1, 1]\n", "nvml.devices: GPU 1 is listed twice"),
        ("nvml:\n  devices: '0,1,0'\n", "nvml.devices: GPU 0 is listed twice"),
        ("nvml:\n  devices: [GPU-aa, GPU-aa]\n", "nvml.devices: GPU-aa is listed twice"),
        ("nvml:\n  devices: [true]\n", "nvml.devices: expected GPU indices or UUIDs such as 0,1"),
        ("nvml:\n  devices: [1.5]\n", "got a float"),
        ("nvml:\n  devices: [gpu-aa]\n", "'gpu-aa' is neither"),
        (endpoint("http://h:1/m", gpus="[-1, 99999]"), "endpoints.0.gpus: GPU indices are 0..1023, got -1"),
        (endpoint("http://h:1/m", gpus="[1024]"), "endpoints.0.gpus: GPU indices are 0..1023, got 1024"),
        (endpoint("http://h:1/m", gpus="[0, '0']"), "endpoints.0.gpus: GPU 0 is listed twice"),
        (endpoint("http://h:1/m", gpus="[]"), "endpoints.0.gpus: expected auto, all, or at least one GPU"),
        (endpoint("http://h:1/m", gpus="any"), "expected auto, all, or GPU indices or UUIDs"),
        (endpoint("http://h:1/m", gpus="[MIG-]"), "'MIG-' is neither"),
    ],
)
def test_bad_gpu_lists_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(text, tmp_path=tmp_path)
    assert expected in message
    assert "literal[" not in message and "union[" not in message  # one problem, not one per type tried


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ("auto", "auto"),
        ("all", "all"),
        ("[0, 1023, GPU-5c2d11aa-0b1c, MIG-4d5e-77]", [0, 1023, "GPU-5c2d11aa-0b1c", "MIG-4d5e-77"]),
        ("'2,3'", [2, 3]),
    ],
)
def test_good_gpu_lists(tmp_path: Path, gpus: str, expected: object) -> None:
    assert load_config(write(tmp_path, endpoint("http://h:1/m", gpus=gpus)), {}).endpoints[0].gpus == expected


def test_endpoint_flag_gpus_are_checked_too() -> None:
    from exporter.cli import build_parser, flag_overrides

    args = build_parser().parse_args(["demo", "--endpoint", "a=http://h:1/m,gpus=0+0"])
    with pytest.raises(ConfigError, match=r"^endpoints\.0\.gpus: GPU 0 is listed twice"):
        load_config(environ={}, overrides=flag_overrides(args))


# -- YAML: encoding, size, depth, aliases -------------------------------------------------------------------


def test_a_file_that_is_not_utf8_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("interval: 2\n# café hunter2\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == f"config file {path} line 2 column 6: not UTF-8 text"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfinterval: 2\n")
    assert load_config(path, {}).interval == 2.0


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_quickly_in_one_short_line(tmp_path: Path) -> None:
    started = time.monotonic()
    message = config_error(BILLION_LAUGHS, tmp_path=tmp_path)
    assert time.monotonic() - started < 2.0  # 9^9 values if expanded: never expanded
    assert message.endswith("more than 100000 values once its aliases are expanded")
    assert len(message) < 200 and "lol" not in message


def test_merge_keys_count_as_expanded(tmp_path: Path) -> None:
    """`<<:` copies the merged mapping's pairs when the file is read: a chain of merges is a bomb too."""
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(8)) + "}"]
    lines += [f"m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}'] * 8)}], x{n}: 1}}" for n in range(1, 12)]
    assert "more than 100000 values" in config_error("\n".join(lines) + "\n", tmp_path=tmp_path)


def test_anchors_and_merge_keys_still_work_within_the_limits(tmp_path: Path) -> None:
    text = (
        "endpoints:\n"
        "  - &base {name: a, url: &url 'http://h:1/metrics', timeout_seconds: 0.5, engine: vllm}\n"
        "  - <<: *base\n"
        "    name: b\n"
        "  - {name: c, url: *url}\n"
    )
    config = load_config(write(tmp_path, text), {})
    assert [(e.name, e.url, e.timeout_seconds, e.engine) for e in config.endpoints] == [
        ("a", "http://h:1/metrics", 0.5, "vllm"),
        ("b", "http://h:1/metrics", 0.5, "vllm"),
        ("c", "http://h:1/metrics", 2.0, "auto"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\n", "line 1 column 4: an alias refers to a collection that contains it"),
        ("x: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels deep"),
        (
            "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: &b " + "[" * 40 + "*a" + "]" * 40 + "\n",
            "nested more than 64 levels deep once its aliases are expanded",
        ),
    ],
)
def test_self_reference_and_depth_are_capped(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(text, tmp_path=tmp_path)


def test_a_long_file_stops_at_the_value_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "MAX_YAML_VALUES", 500)  # 100000 values take seconds to parse
    assert config_error("x: [" + "1, " * 400 + "]\n", tmp_path=tmp_path) == "x: unknown field"  # 403: read
    message = config_error("x: [" + "1, " * 600 + "]\n", tmp_path=tmp_path)
    assert message == f"config file {tmp_path / 'config.yaml'} line 1 column 1496: more than 500 values"


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_FILE_BYTES + "\ninterval: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == f"config file {path}: larger than 1 MiB, too big for a config file"


def test_deeply_nested_json_in_a_variable_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable TPW_ENDPOINTS: JSON nested too deeply$"):
        load_config(environ={"TPW_ENDPOINTS": "[" * 100_000 + "]" * 100_000})


# -- files that are not config files: the file's text is never echoed ----------------------------------------


SECRET_FILES = {
    "shadow-like": "root:$6$Qz9salt$hunter2hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    "key-value secrets": "password: hunter2\napi_token: sk-live-0123456789abcdef\n",
    "unterminated quote": 'interval: 1\npassword: "hunter2\n',
    "undefined alias": "interval: *s3cr3t-alias\n",
    "unknown tag": "interval: !hunter2 1\n",
    "tab in indentation": "interval: 1\n\thunter2: sk-live-0123456789abcdef\n",
    "bad escape": 'interval: "hunter2\\q"\n',
    "key is a secret line": "'root:$6$Qz9salt$hunter2': x\n",
    "flow garbage": "{hunter2: [sk-live-0123456789abcdef}\n",
    "unknown keys nested": "nvml:\n  password: sk-live-0123456789abcdef\n",  # a name is shown, not its value
    "secret url": "endpoints:\n  - {name: 'a b', url: 'https://u:hunter2@h:99999/m?tok-abc123'}\n",
}


@pytest.mark.parametrize("case", SECRET_FILES)
def test_errors_never_echo_the_files_text(tmp_path: Path, case: str) -> None:
    message = config_error(SECRET_FILES[case], tmp_path=tmp_path)
    for secret in SECRETS:
        assert secret not in message, message


def test_yaml_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 1\npassword: hunter2: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == f"config file {path} line 2 column 18: mapping values are not allowed here"


def test_unknown_keys_are_named_only_when_they_look_like_a_setting(tmp_path: Path) -> None:
    text = "intervall: 1\n'root:$6$Qz9salt$x': y\nnvml:\n  hunter: 2\n"
    assert config_error(text, tmp_path=tmp_path) == (
        "nvml.hunter: unknown field; intervall: unknown field; <key not shown>: unknown field"
    )


def test_many_problems_make_one_capped_line(tmp_path: Path) -> None:
    text = "".join(f"unknown_setting_number_{i}: {i}\n" for i in range(200))
    message = config_error(text, tmp_path=tmp_path)
    assert message.startswith("unknown_setting_number_0: unknown field; unknown_setting_number_1: ")
    assert message.endswith("more problems")


def test_unreadable_directory_and_non_mapping_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, {})
    assert str(caught.value) == f"config file {tmp_path}: Is a directory"

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "just a line of some other file hunter2\n"), {})
    assert str(caught.value).endswith("config.yaml: expected a mapping of settings, got str")

    def refuse(self: Path, *args: object, **kwargs: object) -> io.BufferedReader:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "secret.yaml", {})
    assert str(caught.value) == f"config file {tmp_path / 'secret.yaml'}: Permission denied"


def test_one_line_caps_and_flattens() -> None:
    assert one_line("a\nb\r\tc\x1b[31m") == "a b  c [31m"
    assert len(one_line("x" * 5000)) == MAX_ERROR_CHARS


# -- check-config prints URLs redacted unless --show-secrets ------------------------------------------------


def test_redact_url() -> None:
    assert redact_url("http://u:pw@h:8000/metrics?token=abc&x&y=2#frag") == (
        "http://<redacted>@h:8000/metrics?token=<redacted>&<redacted>&y=<redacted>#<redacted>"
    )
    assert redact_url("https://[::1]:8000/metrics") == "https://[::1]:8000/metrics"


def test_check_config_redacts_endpoint_urls_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import cli

    for name in [name for name in os.environ if name.startswith("TPW_")]:
        monkeypatch.delenv(name)
    path = write(tmp_path, endpoint("http://admin:hunter2@h:8000/metrics?token=tok-abc123"))
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "url: http://<redacted>@h:8000/metrics?token=<redacted>\n" in out
    assert "hunter2" not in out and "tok-abc123" not in out and "admin" not in out
    assert "--show-secrets prints them" in out
    assert cli.main(["check-config", "--show-secrets", str(path)]) == 0
    assert "url: http://admin:hunter2@h:8000/metrics?token=tok-abc123\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("a=http://u:hunter2@h/m?token=tok-abc123,x", "--endpoint 'a': an option without '='"),
        ("a=http://h/m?a=1,token=tok-abc123", "--endpoint 'a': unknown option 'token'"),
        ("http://u:hunter2@h/m", "--endpoint 'http://<redacted>@h/m': expected NAME=URL"),
    ],
)
def test_endpoint_flag_errors_never_echo_url_secrets(flag: str, expected: str) -> None:
    from exporter.cli import build_parser, flag_overrides

    with pytest.raises(ConfigError) as caught:
        flag_overrides(build_parser().parse_args(["demo", "--endpoint", flag]))
    assert str(caught.value).startswith(expected)
    assert "hunter2" not in str(caught.value) and "tok-abc123" not in str(caught.value)


# -- binding the listen address ---------------------------------------------------------------------------


def test_an_address_in_use_is_a_config_error_naming_listen_address() -> None:
    from exporter.server import bind_listen_address

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError) as caught:
            bind_listen_address(Config(listen_address=address))
    assert str(caught.value) == f"listen_address: cannot listen on {address}: Address already in use"


# -- the demo engine: a client that goes away is not a traceback ---------------------------------------------


def test_demo_engine_is_quiet_about_clients_that_go_away(capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.demo.engine import _QuietHTTPServer

    server = _QuietHTTPServer.__new__(_QuietHTTPServer)  # handle_error needs no socket
    for gone in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "Connection reset by peer")):
        try:
            raise gone
        except OSError:
            server.handle_error(None, ("127.0.0.1", 40000))
    assert capsys.readouterr().err == ""
    try:
        raise ValueError("a real bug")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 40000))
    assert "ValueError: a real bug" in capsys.readouterr().err  # other errors are still reported


def test_demo_engine_survives_a_client_that_resets(capsys: pytest.CaptureFixture[str]) -> None:
    """A real client that sends a request and resets the connection; the engine still answers the next."""
    from exporter.demo.engine import SimulatedEngineServer

    class Engine:
        def available(self) -> bool:
            return True

        def page(self) -> str:
            return "x 1\n" * 200_000  # more than the socket buffers hold: the write meets the reset

    server = SimulatedEngineServer(Engine(), port=0)  # type: ignore[arg-type]
    server.start()
    try:
        host, port = server.url.split("/")[2].split(":")
        for _ in range(3):
            client = socket.create_connection((host, int(port)))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(1024)  # the engine is writing
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST
        time.sleep(0.3)
        with socket.create_connection((host, int(port))) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
