"""Config precedence (flags > env > file > defaults) and one-line errors that name the field.

The CLI as a process (check-config, exit status 2, --help): tests/integration/test_config_cli.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import write_config as write

from exporter.config import Config, ConfigError, load_config, unknown_env_variables
from exporter.node import build_node
from exporter.sources.endpoints import EndpointsSource

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
        ("nvml:\n  devices: [-1]\n", {}, "nvml.devices: GPU indices are 0..1023, got -1"),
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


# -- environment variables: plain values as written, JSON only for lists and mappings (issue 12) ----------


ENV_AS_WRITTEN: dict[str, tuple[dict[str, str], Callable[[Config], object], object]] = {
    "ipv6-any": (
        {"TPW_LISTEN_ADDRESS": "[::]:9835"},
        lambda c: (c.listen_address, c.host),
        ("[::]:9835", "::"),
    ),
    "ipv6-loopback": ({"TPW_LISTEN_ADDRESS": "[::1]:9100"}, lambda c: (c.host, c.port), ("::1", 9100)),
    "devices-json": ({"TPW_NVML__DEVICES": "[0, 1]"}, lambda c: c.nvml.devices, [0, 1]),
    "devices-plain": ({"TPW_NVML__DEVICES": "0,1"}, lambda c: c.nvml.devices, [0, 1]),
    "schedule-json": (
        {"TPW_SIMULATION__SCHEDULE": '[{"scenario": "idle", "seconds": 5}]'},
        lambda c: c.simulation.schedule[0].seconds,
        5.0,
    ),
    "bound-object": (
        {"TPW_DERIVE__BOUND": '{"latency_sm_below": 0.2}'},
        lambda c: c.derive.bound.latency_sm_below,
        0.2,
    ),
    "endpoints-list": (
        {"TPW_ENDPOINTS": '[{"name": "llama", "url": "http://localhost:8000/metrics", "gpus": [0]}]'},
        lambda c: c.endpoints[0].gpus,
        [0],
    ),
}


@pytest.mark.parametrize("case", ENV_AS_WRITTEN)
def test_environment_values_are_taken_as_written_and_json_only_for_lists_and_mappings(case: str) -> None:
    environ, getter, expected = ENV_AS_WRITTEN[case]
    assert getter(load_config(environ=environ)) == expected


def test_a_string_setting_that_looks_like_json_is_still_a_string() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TPW_SITE__CURRENCY": "{EUR}"})
    assert str(caught.value).startswith("site.currency: must be a 3-letter")  # the value, not a JSON error


def test_bad_json_for_a_list_setting_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TPW_NVML__DEVICES": "[0, 1", "TPW_LISTEN_ADDRESS": "[::]:9835"})
    message = str(caught.value)
    assert message.startswith("environment variable TPW_NVML__DEVICES: not valid JSON (")
    assert "\n" not in message


def test_unknown_variables_are_ignored_and_named_but_known_ones_are_not() -> None:
    environ = {
        "TPW_BIND": "0.0.0.0",  # docker-compose.yml's publish address
        "TPW_BOGUS": "hunter2",
        "TPW_SIMULATION__GPUZ": "4",
        "TPW_INTERVAL": "2",
        "TPW_DERIVE__BOUND__LATENCY_SM_BELOW": "0.2",
        "OTHER": "x",
    }
    config = load_config(environ=environ)
    assert config.interval == 2.0 and config.derive.bound.latency_sm_below == 0.2
    assert unknown_env_variables(environ) == ["TPW_BOGUS", "TPW_SIMULATION__GPUZ"]
    assert unknown_env_variables({"TPW_CONFIG": "/etc/x.yaml", "TPW_BIND": "::"}) == []


def test_cli_warns_once_about_unknown_variables_naming_them_never_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import cli

    for name, value in {"TPW_BOGUS": "hunter2", "TPW_OTHER": "s3cret", "TPW_BIND": "0.0.0.0"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check-config", str(write(tmp_path, "interval: 2\n"))]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "tpw-exporter: warning: ignoring unknown environment variables TPW_BOGUS, TPW_OTHER: no such setting"
    )
    assert "hunter2" not in captured.err + captured.out and "s3cret" not in captured.err + captured.out
    assert "TPW_BIND" not in captured.err
    assert "interval: 2.0" in captured.out


# -- error messages: the field and the problem, the value once and without secrets (issue 12) -------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen_address: foo\n", "listen_address: expected host:port such as 0.0.0.0:9835, got 'foo'"),
        ("listen_address: 'h:99999'\n", "listen_address: port must be 0..65535, got 99999"),
        ("nvml:\n  devices: [-1]\n", "nvml.devices: GPU indices are 0..1023, got -1"),
        ("interval: -1\n", "interval: Input should be greater than or equal to 0.05 (got -1)"),
        (
            "log_level: loud\n",
            "log_level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
        ),
    ],
)
def test_errors_quote_the_value_once(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {})
    assert str(caught.value) == expected


def test_errors_never_echo_url_credentials_or_query_strings(tmp_path: Path) -> None:
    text = "endpoints:\n  - {name: a, url: 'ftp://admin:hunter2@engine:8000/metrics?token=abc123#x'}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {})
    message = str(caught.value)
    assert message == (
        "endpoints.0.url: expected an http:// or https:// URL such as http://localhost:8000/metrics "
        "(got 'ftp://<redacted>@engine:8000/metrics?token=<redacted>#<redacted>')"
    )


def test_a_long_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TPW_LOG_LEVEL": "x" * 500})
    message = str(caught.value)
    assert len(message) < 200 and message.endswith("…)")


# -- endpoint timeouts: capped at the tick's budget; only a chosen one warns (issue 12) --------------------


def _scraper_warnings(config: Config, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exporter.sources.endpoints"):
        source = EndpointsSource(config.endpoints, tick_budget_seconds=config.tick_budget_seconds)
    timeouts = [scraper.timeout for scraper in source.scrapers]
    asyncio.run(source.close())
    assert timeouts == [config.endpoint_timeout(endpoint) for endpoint in config.endpoints]
    return [record.getMessage() for record in caplog.records]


def test_a_default_timeout_is_capped_silently_and_a_chosen_one_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    default = load_config(write(tmp_path, "endpoints:\n  - {name: a, url: 'http://h:1/metrics'}\n"), {})
    assert default.endpoint_timeout(default.endpoints[0]) == pytest.approx(0.8)
    assert _scraper_warnings(default, caplog) == []
    chosen = load_config(
        write(tmp_path, "endpoints:\n  - {name: a, url: 'http://h:1/metrics', timeout_seconds: 2}\n"), {}
    )
    assert _scraper_warnings(chosen, caplog) == [
        "endpoint a: timeout_seconds 2 capped at 0.8 s to fit the collection interval; "
        "raise `interval` for engines slower than that"
    ]
    fits = load_config(
        write(
            tmp_path,
            "interval: 5\nendpoints:\n  - {name: a, url: 'http://h:1/metrics', timeout_seconds: 2}\n",
        ),
        {},
    )
    assert fits.endpoint_timeout(fits.endpoints[0]) == 2.0
    assert _scraper_warnings(fits, caplog) == []


def test_the_demo_node_builds_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    node = build_node(load_config(environ={}), "demo")
    try:
        (demo,) = node.endpoints
        assert demo.name == "demo-vllm"
    finally:
        for stop in node.stop:
            stop()
        for source in node.sources:
            asyncio.run(source.close())
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_check_config_prints_each_endpoints_effective_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import cli

    for name in [name for name in os.environ if name.startswith("TPW_")]:
        monkeypatch.delenv(name)
    text = (
        "interval: 1\nendpoints:\n"
        "  - {name: slow, url: 'http://h:1/metrics', timeout_seconds: 2}\n"
        "  - {name: quick, url: 'http://h:2/metrics', timeout_seconds: 0.5}\n"
        "  - {name: plain, url: 'http://h:3/metrics'}\n"
    )
    path = write(tmp_path, text)
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "# effective scrape time limits: timeout_seconds capped at 80% of interval (0.8 s)\n"
        "#   slow: 0.8 s (timeout_seconds 2 capped)\n"
        "#   quick: 0.5 s\n"
        "#   plain: 0.8 s (timeout_seconds 2 capped)\n"
    )

    assert (
        load_config(environ={}, overrides=yaml.safe_load(out)).endpoints[0].name == "slow"
    )  # still a config
