"""Config precedence (flags > env > file > defaults) and one-line errors that name the field.

The CLI as a process (check-config, exit status 2, --help): tests/integration/test_config_cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import write_config as write

from exporter.config import ConfigError, load_config

# Bad `derive` and `site` values (the keys of the derived metrics).
DERIVE_AND_SITE_ERRORS = [
    ("derive:\n  window: 1.5\n", {}, "derive.window: must be at least 2 × interval (2 s)"),
    ("interval: 20\n", {}, "derive.window: must be at least 2 × interval (40 s)"),
    ("derive:\n  window: 100000\n", {}, "derive.window: Input should be less than or equal to 86400"),
    ("derive:\n  window: 0\n", {}, "derive.window: Input should be greater than 0"),
    ("derive:\n  bound:\n    idle_graphics_below: 5\n", {}, "derive.bound.idle_graphics_below"),
    ("derive:\n  bound:\n    tensor: 0.5\n", {}, "derive.bound.tensor: unknown field"),
    ("site:\n  pue: 0.8\n", {}, "site.pue: Input should be greater than or equal to 1"),
    ("site:\n  currency: usd\n", {}, "site.currency: must be a 3-letter upper-case ISO 4217 code"),
    ("", {"TPW_SITE__CURRENCY": "EURO"}, "site.currency"),
    ("site:\n  electricity_price_per_kwh: -1\n", {}, "site.electricity_price_per_kwh"),
    ("site:\n  carbon_intensity_grams_per_kwh: -3\n", {}, "site.carbon_intensity_grams_per_kwh"),
]


def test_defaults() -> None:
    config = load_config(environ={})
    assert config.interval == 1.0
    assert (config.host, config.port) == ("0.0.0.0", 9835)
    assert config.simulation.gpus == 2
    assert config.nvml.profiling is True


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5\nlog_level: debug\nsimulation:\n  gpus: 4\n  scenario: idle\n")
    environ = {"TPW_INTERVAL": "3", "TPW_SIMULATION__GPUS": "6"}
    config = load_config(path, environ, overrides={"interval": 2.0})
    assert config.interval == 2.0  # flag
    assert config.simulation.gpus == 6  # env beats file
    assert config.simulation.scenario == "idle"  # file beats default
    assert config.log_level == "debug"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_address: '127.0.0.1:9999'\n")
    assert load_config(environ={"TPW_CONFIG": str(path)}).port == 9999


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("interval: -1\n", {}, "interval: Input should be greater than or equal to 0.05 (got -1)"),
        ("intervall: 1\n", {}, "intervall: unknown field"),
        (
            "simulation:\n  scenario: turbo\n",
            {},
            "simulation.scenario: Input should be 'idle', 'compute-bound'",
        ),
        ("listen_address: nonsense\n", {}, "listen_address: expected host:port"),
        ("", {"TPW_SIMULATION__GPUS": "many"}, "simulation.gpus: Input should be a valid integer"),
        ("- a\n- b\n", {}, "expected a mapping of settings, got list"),
        ("interval: [\n", {}, "line 2"),
        ("", {"TPW_NVML__DEVICES": "0,gpu1"}, "nvml.devices: expected GPU indices or UUIDs such as 0,1"),
        ("nvml:\n  devices: [-1]\n", {}, "nvml.devices: GPU indices are 0 or more, got -1"),
        ("nvml:\n  devices: []\n", {}, "nvml.devices: List should have at least 1 item"),
        *DERIVE_AND_SITE_ERRORS,
    ],
)
def test_bad_values_give_one_line_naming_the_field(
    tmp_path: Path, text: str, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "environ", "devices"),
    [
        ("", {}, None),
        ("", {"TPW_NVML__DEVICES": "0,1"}, [0, 1]),
        ("", {"TPW_NVML__DEVICES": "GPU-5c2d-11aa, 3"}, ["GPU-5c2d-11aa", 3]),
        ("", {"TPW_NVML__DEVICES": "[2]"}, [2]),
        ("nvml:\n  devices: [1, GPU-aa]\n", {}, [1, "GPU-aa"]),
        ("nvml:\n  devices: 2\n", {}, [2]),
    ],
)
def test_devices_from_file_and_environment(
    tmp_path: Path, text: str, environ: dict[str, str], devices: list[int | str] | None
) -> None:
    assert load_config(write(tmp_path, text), environ).nvml.devices == devices


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.yaml", {})


def test_endpoint_flag_is_parsed_into_the_config() -> None:
    from exporter.cli import parse_endpoint_flag

    assert parse_endpoint_flag(
        "vllm=http://localhost:8000/metrics,engine=vllm,gpus=0+GPU-abc,timeout=1.5"
    ) == {
        "name": "vllm",
        "url": "http://localhost:8000/metrics",
        "engine": "vllm",
        "gpus": [0, "GPU-abc"],
        "timeout_seconds": "1.5",
    }
    assert parse_endpoint_flag("a=http://h/metrics,gpus=all")["gpus"] == "all"


def test_duplicate_endpoint_names_are_refused(tmp_path: Path) -> None:
    text = "endpoints:\n  - {name: a, url: 'http://h:1/metrics'}\n  - {name: a, url: 'http://h:2/metrics'}\n"
    with pytest.raises(ConfigError, match="endpoint name 'a' is used twice"):
        load_config(write(tmp_path, text), {})


def test_empty_environment_variable_is_a_value_not_json() -> None:
    with pytest.raises(ConfigError, match="log_level: Input should be"):
        load_config(environ={"TPW_LOG_LEVEL": ""})
    assert load_config(environ={"TPW_SIMULATION__SCENARIO": "idle"}).simulation.scenario == "idle"


def test_serve_with_a_device_the_node_lacks_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fake_nvml import Clock, FakeGpu, FakeNvml

    from exporter import cli

    fake = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1")], Clock())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    code = cli.main(["serve", "--devices", "0,7", "--listen-address", "127.0.0.1:0"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "tpw-exporter: config error: nvml.devices: GPU index 7 is not on this node (it has 2 GPU(s): 0..1)"
    )
