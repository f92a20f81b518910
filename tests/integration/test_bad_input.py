"""Bad input as a user meets it (issue 13): the exporter as a process, its stderr and its exit status.

Every case is one line on stderr naming the field or the file, exit status 2, before anything is bound or
logged as listening; never a traceback, never a line of the file or a secret. In process (each validator,
the YAML limits, redaction): tests/unit/test_config_bad_input.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, free_port

SECRET_LINES = [
    "root:$6$Qz9saltsalt$Hash0fTheR00tPassw0rdXYZ:19700:0:99999:7:::",
    "operator:$y$j9T$0p3rat0rSalt$An0therHashValue:19700:0:99999:7:::",
    "api_token: sk-live-0123456789abcdef",
    "password: hunter2",
]
# What a line of the file could leak through: each line, and the secret parts of each.
SECRET_PARTS = [
    *SECRET_LINES,
    "Qz9saltsalt",
    "Hash0fTheR00t",
    "0p3rat0rSalt",
    "sk-live-0123456789abcdef",
    "hunter2",
]


def run_exporter(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TPW_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stdout == "", output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("tpw-exporter: config error: "), output
    assert "Traceback" not in output and "listening on" not in output
    assert len(result.stderr) < 1100
    for text in expected:
        assert text in result.stderr, output
    return result.stderr


SECRET_FILES = {
    "shadow-like": "\n".join(SECRET_LINES[:2]) + "\n",
    "shadow-like with key-value lines": "\n".join(SECRET_LINES) + "\n",
    "not UTF-8": ("interval: 1\n# caf\xe9\n" + "\n".join(SECRET_LINES) + "\n").encode("latin-1"),
    "YAML error after secrets": "\n".join(SECRET_LINES[2:]) + "\n  - [unbalanced: {\n",
    "secrets then a tab": "\n".join(SECRET_LINES[2:]) + "\n\tsk-live-0123456789abcdef: x\n",
}


@pytest.mark.parametrize("case", SECRET_FILES)
def test_a_file_with_secrets_is_never_echoed(tmp_path: Path, case: str) -> None:
    path = tmp_path / "not-a-config"
    content = SECRET_FILES[case]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    error = assert_one_line_exit_2(run_exporter("check-config", str(path)))
    for part in SECRET_PARTS:
        assert part not in error, error


def test_a_shadow_like_file_is_named_as_no_config(tmp_path: Path) -> None:
    path = tmp_path / "shadow"
    path.write_text("\n".join(SECRET_LINES[:2]) + "\n")  # each line a YAML key: `…:7::` then ':'
    error = assert_one_line_exit_2(run_exporter("check-config", str(path)))
    assert error == (
        f"tpw-exporter: config error: config file {path}: expected a mapping of settings; no key in it is a "
        "setting name\n"
    )


def test_a_billion_laughs_file_is_one_short_line(tmp_path: Path) -> None:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    error = assert_one_line_exit_2(run_exporter("check-config", str(path), timeout=20))
    assert error.endswith("more than 100000 values once its aliases are expanded\n")
    assert len(error) < 200


def test_an_endpoint_port_out_of_range_fails_check_config_and_serve_alike(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("endpoints:\n  - {name: a, url: 'http://u:hunter2@127.0.0.1:99999/metrics?t=x1'}\n")
    expected = "endpoints.0.url: the URL's port must be 1..65535, got 99999"
    for args in (
        ("check-config", str(path)),
        ("demo", "--config", str(path), "--listen-address", f"127.0.0.1:{free_port()}"),
    ):
        error = assert_one_line_exit_2(run_exporter(*args), expected)
        assert "hunter2" not in error and "x1" not in error


def test_a_bad_listen_host_is_refused_naming_it() -> None:
    assert_one_line_exit_2(
        run_exporter("demo", "--listen-address", "256.1.1.1:9835"),
        "listen_address: '256.1.1.1' is not an IPv4 address",
    )


def test_a_port_in_use_exits_2_naming_listen_address_before_logging_listening() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_exporter("demo", "--listen-address", address)
    assert_one_line_exit_2(result, f"listen_address: cannot listen on {address}: Address already in use")


def test_gpu_indices_out_of_range_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("nvml:\n  devices: [-1, 99999]\n")
    assert_one_line_exit_2(run_exporter("check-config", str(path)), "nvml.devices: GPU indices are 0..1023")
    assert_one_line_exit_2(
        run_exporter("serve", "--devices", "0,0", "--listen-address", f"127.0.0.1:{free_port()}"),
        "nvml.devices: GPU 0 is listed twice",
    )


def test_a_directory_as_the_config_file(tmp_path: Path) -> None:
    assert_one_line_exit_2(
        run_exporter("check-config", str(tmp_path)), f"config file {tmp_path}: Is a directory"
    )
