"""The live page at / in a real browser: Debian's chromium, driven by Playwright, against the exporter as
users run it (`python -m exporter demo`, 0.5 s ticks, a schedule healthy for 12 s then input-bound) behind
TLS and basic auth from a web config file.

In order, on one page: it loads with no console error and no failed request; every chart draws (a canvas
with coloured pixels in its plot area); while the node is healthy there is no finding; the numbers shown
are /api/v1/snapshot's at the same tick (the body's data-tick); when the demo turns input-bound the finding
appears; without credentials nothing is served. Screenshots go to tests/artifacts/live-page/ (ignored by
git; TPW_TEST_ARTIFACTS sets another directory), printed by the last test. About 20 s.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from helpers import REPO, ExporterProcess, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HEALTHY_SECONDS = 12
SCHEDULE = f"healthy:{HEALTHY_SECONDS},input-bound:600"
USER, PASSWORD = "viewer", "live page"
ARTIFACTS = Path(os.environ.get("TPW_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "live-page"
CHARTS = ("gpu0-bound", "gpu0-activity", "gpu0-power", "gpu1-bound", "gpu1-activity", "gpu1-power")
CHARTS += ("endpoint0-throughput", "endpoint0-requests")


@dataclass
class Live:
    exporter: ExporterProcess
    url: str
    context: ssl.SSLContext
    page: Any
    browser: Any
    problems: list[str] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, bytes]:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=5, context=self.context) as response:
            return response.status, response.read()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def sync_api() -> Any:
    try:
        import playwright.sync_api
    except ImportError:
        raise AssertionError("Playwright is missing: pip install -e '.[test]' (`make test` does)") from None
    return playwright.sync_api


def self_signed(directory: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "the `openssl` command is missing: apt-get install openssl"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(directory / "server.key"), "-out", str(directory / "server.crt"), "-days", "2",
         "-subj", "/CN=tpw-exporter", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make tools` installs Debian's chromium"
    directory = tmp_path_factory.mktemp("live")
    self_signed(directory)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (directory / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    )
    exporter = ExporterProcess(
        ["demo", "--interval", "0.5", "--phase-seconds", "1.5", "--scenario-schedule", SCHEDULE,
         "--web.config.file", str(directory / "web.yml"), "--log-level", "warning"],
        env={"TPW_DERIVE__WINDOW": "2"},
    )  # fmt: skip
    url = f"https://127.0.0.1:{exporter.port}"
    context = ssl.create_default_context(cafile=str(directory / "server.crt"))
    playwright = sync_api().sync_playwright().start()
    browser = None
    try:

        def ready() -> bool:
            assert exporter.process.poll() is None, exporter.output()
            with urllib.request.urlopen(f"{url}/readyz", timeout=2, context=context) as response:
                return response.status == 200

        wait_for(ready, 20, "the exporter over TLS")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser_context = browser.new_context(
            http_credentials={"username": USER, "password": PASSWORD},
            ignore_https_errors=True,  # the test's own self-signed certificate
            viewport={"width": 1280, "height": 900},
        )
        page = browser_context.new_page()
        state = Live(exporter, url, context, page, browser)
        page.on(
            "console",
            lambda m: state.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: state.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: state.problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response", lambda r: state.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        yield state
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()
        exporter.stop()


def tick(live: Live) -> int:
    return int(live.page.evaluate("() => document.body.dataset.tick"))


def test_the_page_loads_over_tls_with_basic_auth_without_an_error(live: Live) -> None:
    response = live.page.goto(live.url + "/")
    assert response is not None and response.status == 200
    live.page.wait_for_function("() => Number(document.body.dataset.tick) > 0", timeout=10_000)
    assert live.page.title() == "tpw-exporter: live"
    assert live.page.evaluate("() => document.body.dataset.state") == "live"
    assert live.problems == []


def colored_pixels(live: Live) -> dict[str, int]:
    """Per chart: opaque, saturated pixels in its plot area (series and states; grid and axes are grey)."""
    return live.page.evaluate(
        """() => Object.fromEntries(Object.entries(window.tpwLive.charts).map(([id, u]) => {
            const box = u.bbox;
            const pixels = u.ctx.getImageData(box.left, box.top, box.width, box.height).data;
            let colored = 0;
            for (let i = 0; i < pixels.length; i += 4) {
                const r = pixels[i], g = pixels[i + 1], b = pixels[i + 2];
                if (pixels[i + 3] > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 40) colored++;
            }
            return [id, colored];
        }))"""
    )


def test_every_chart_draws_and_nothing_is_found_while_healthy(live: Live) -> None:
    live.page.wait_for_function("() => window.tpwLive.state.times.length >= 4", timeout=10_000)
    live.page.evaluate("() => window.tpwLive.refresh()")
    pixels = colored_pixels(live)
    assert set(pixels) == set(CHARTS), pixels
    for chart, count in pixels.items():
        assert count >= 100, (chart, pixels)  # a line 2 px thick across 4 points is hundreds
    assert live.page.evaluate("() => document.body.dataset.scenario") == "healthy"
    assert live.page.locator("#findings > li").count() == 0
    assert live.page.locator("#no-findings").is_visible()
    live.screenshot("healthy")
    assert live.problems == []


def page_values(live: Live) -> tuple[int, dict[tuple[str, str], str]]:
    got = live.page.evaluate(
        """() => ({
            tick: document.body.dataset.tick,
            values: Array.from(document.querySelectorAll("[data-value]")).map(node => {
                const card = node.closest("[data-gpu], [data-endpoint]");
                const who = card.dataset.gpu !== undefined ? "gpu" + card.dataset.gpu : card.dataset.endpoint;
                return [who, node.dataset.field, node.dataset.value, node.textContent];
            }),
        })"""
    )
    return int(got["tick"]), {(who, name): (value, text) for who, name, value, text in got["values"]}


def snapshot_values(snapshot: dict[str, Any]) -> dict[tuple[str, str], float | str | None]:
    out: dict[tuple[str, str], float | str | None] = {}
    bounds = {g["index"]: g["bound"] for g in snapshot["derived"]["gpus"]}
    for gpu in snapshot["gpus"]:
        who, ratios = f"gpu{gpu['info']['index']}", gpu["profiling"]["ratios"]
        out[(who, "utilization")] = gpu["utilization_ratio"]
        out[(who, "sm_active")] = ratios["sm_active"]
        out[(who, "tensor")] = ratios["tensor_active"]
        out[(who, "dram")] = ratios["dram_bandwidth_utilization"]
        out[(who, "power")] = gpu["power_watts"]
        out[(who, "bound")] = bounds[gpu["info"]["index"]]
    derived = {e["name"]: e for e in snapshot["derived"]["endpoints"]}
    for endpoint in snapshot["endpoints"]:
        name = endpoint["name"]
        out[(name, "tokens_per_second")] = derived[name]["generation_tokens_per_second"]
        out[(name, "tokens_per_joule")] = derived[name]["tokens_per_joule"]
        for field_name in ("running", "waiting"):
            out[(name, field_name)] = sum(
                v["value"] for v in endpoint["values"] if v["field"] == f"requests_{field_name}"
            )
    return out


def test_the_numbers_shown_are_the_snapshots_at_the_same_tick(live: Live) -> None:
    for _ in range(30):  # the page and the snapshot meet on a tick within a few tries (ticks: 0.5 s)
        live.page.evaluate("() => window.tpwLive.refresh()")
        shown_tick, shown = page_values(live)
        snapshot = json.loads(live.get("/api/v1/snapshot")[1])
        if snapshot["tick"] == shown_tick:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the page and /api/v1/snapshot never showed the same tick")
    expected = snapshot_values(snapshot)
    assert set(shown) == set(expected)
    for key, value in expected.items():
        raw, text = shown[key]
        if isinstance(value, str):
            assert raw == value and text == value, key
            continue
        assert value is not None and float(raw) == value, (key, raw, value)  # exactly: JSON both ways
        if key[1] in ("utilization", "sm_active", "tensor", "dram"):
            assert text == f"{math.floor(value * 100 + 0.5)} %", (key, text, value)
        elif key[1] in ("running", "waiting"):
            assert text == f"{math.floor(value + 0.5):,}", (key, text, value)
    assert live.problems == []


def test_a_finding_appears_when_the_demo_turns_input_bound(live: Live) -> None:
    finding = live.page.locator('#findings > li[data-pattern="input-bound"]')
    finding.wait_for(timeout=25_000)
    assert finding.get_attribute("data-ongoing") == "true"
    text = finding.inner_text()
    assert "Input/CPU-bound" in text and "endpoint demo-vllm" in text and "GPUs 0, 1" in text
    assert "runbook TPWUnderUtilized" in text
    assert live.page.evaluate("() => document.body.dataset.scenario") == "input-bound"
    history = json.loads(live.get("/api/v1/history")[1])
    assert [f["pattern"] for f in history["findings"] if f["ongoing"]] == ["input-bound"]
    live.screenshot("input-bound")
    assert live.problems == []


def test_without_credentials_nothing_is_served(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    context = live.browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        with pytest.raises(sync_api().Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(live.url + "/")  # asked for credentials, the browser has none
        asset = live.page.evaluate("() => document.querySelector('script[src*=live]').getAttribute('src')")
        for path in ("/", asset, "/api/v1/history", "/api/v1/snapshot"):
            assert context.request.get(live.url + path).status == 401, path
        assert context.request.get(live.url + "/healthz").status == 200
    finally:
        context.close()
    with capsys.disabled():
        print(f"\nlive page screenshots: {ARTIFACTS}")
