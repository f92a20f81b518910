"""A new user's first hour with the README and the Makefile (issue 12).

`make demo` serves where the README says, `make test` installs no PyTorch, the README tells how to reach the
`tpw-exporter` command that `make` installs into .venv, its shell recipes never run a server in the
foreground before the commands that talk to it, and the demo's opening is what the README explains.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from exporter.cli import build_parser, flag_overrides
from exporter.config import load_config
from exporter.demo.engine import SERVING, SimulatedEngine
from exporter.demo.scenarios import Scenario

README = (REPO / "README.md").read_text()


def make_dry_run(*args: str) -> list[str]:
    """The commands `make -n ARGS` would run, one string each (make's own environment cleared of MAKE*)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def demo_config(*make_args: str) -> tuple[str, int]:
    (line,) = [line for line in make_dry_run("demo", *make_args) if " -m exporter demo" in line]
    argv = shlex.split(line)
    args = build_parser().parse_args(argv[argv.index("exporter") + 1 :])
    config = load_config(environ={}, overrides=flag_overrides(args))
    return config.host, config.port


def test_make_demo_binds_loopback_as_the_readme_says() -> None:
    assert demo_config() == ("127.0.0.1", 9835)
    top = README[: README.index("\n## ")]
    assert "http://localhost:9835/metrics" in top and "binds `127.0.0.1:9835`" in top


def test_make_demo_serves_elsewhere_when_asked() -> None:
    assert demo_config("DEMO_ADDRESS=0.0.0.0:9835") == ("0.0.0.0", 9835)
    assert demo_config("ARGS=--listen-address [::]:9000 --gpus 4") == ("::", 9000)


def test_make_test_installs_no_torch() -> None:
    commands = make_dry_run("-B", ".venv/.installed-test")
    installs = [line for line in commands if "pip install" in line]
    assert any("'.[test]'" in line for line in installs), installs
    assert not any(re.search(r"\btorch\b", line) for line in installs), installs
    assert not re.search(r"[\"']torch\b", (REPO / "pyproject.toml").read_text()), "no extra installs torch"


def test_readme_says_how_to_get_the_command_make_installs() -> None:
    top = README[: README.index("\n## ")]
    assert ". .venv/bin/activate" in top and "another terminal" in top
    # What activation gives: the venv (the one these tests run in) has the `tpw-exporter` script.
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "activate").is_file() and (venv_bin / "tpw-exporter").is_file()
    first_command = README.index("tpw-exporter demo --")
    assert README.index(". .venv/bin/activate") < first_command


def shell_blocks(text: str) -> list[list[str]]:
    """Each ```sh block as logical command lines (continuations joined, comments and blanks dropped)."""
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        heredoc = re.compile(r"<<'?(\w+)'?\n.*?\n\1\n", re.S)
        joined = heredoc.sub("\n", joined)
        lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line])
    return blocks


SERVER = re.compile(
    r"(^|\s)(tpw-exporter (demo|serve)|python -m exporter (demo|serve)|prometheus |make (demo|serve))"
)


@pytest.mark.parametrize("path", ["README.md", "CONTRIBUTING.md", "docs/runbooks/README.md"])
def test_no_recipe_talks_to_a_server_it_started_in_the_foreground(path: str) -> None:
    for block in shell_blocks((REPO / path).read_text()):
        foreground = None
        for line in block:
            if foreground and re.search(r"\b(curl|wget)\b", line):
                pytest.fail(f"{path}: `{line}` runs only after `{foreground}` exits: background it (&)")
            if SERVER.search(line) and "--help" not in line and not line.endswith("&"):
                foreground = line


def test_the_recipe_check_catches_a_foreground_server() -> None:
    block = "```sh\nTPW_X=1 tpw-exporter demo \\\n  --interval 0.5\ncurl -s localhost:9835/metrics\n```\n"
    (lines,) = shell_blocks(block)
    assert SERVER.search(lines[0]) and not lines[0].endswith("&")


def test_the_demo_opening_is_what_the_readme_explains() -> None:
    """Default demo: GPU 0 idle, the data-parallel engine's 256 running requests all GPU 1's (the GEMM)."""
    config = load_config(environ={})
    assert (config.simulation.scenario, config.simulation.gpus) == ("mixed", 2)
    scenario = Scenario(config.simulation.scenario, config.simulation.phase_seconds)
    engine = SimulatedEngine(scenario, config.simulation.gpus, lambda: 0.0, 0.0)
    phase = config.simulation.phase_seconds
    for t in (1.0, phase + 1, 2 * phase + 1, 3 * phase + 1):
        workloads = [scenario.blend_at(gpu, t).end for gpu in range(config.simulation.gpus)]
        state = engine.state(t)
        # The engine's load is the sum of what each GPU serves: an idle GPU serves nothing.
        assert state.running == sum(SERVING[workload].running for workload in workloads)
        assert state.waiting == sum(SERVING[workload].waiting for workload in workloads)
    assert [scenario.blend_at(gpu, 1.0).end for gpu in range(2)] == ["idle", "compute-bound"]
    assert engine.state(1.0).running == SERVING["compute-bound"].running == 256
    demo = " ".join(README[README.index("The demo adds a simulated vLLM engine") :].split()[:160])
    for claim in ("data-parallel", "GPU 0 idle", "256 running requests", "all GPU 1's", "--scenario healthy"):
        assert claim in demo, claim
