"""docs/h100-reference.md: the project carries the H100 facts it cites (issue 12).

Every citation in the repository points at the project's own page (never a path outside it), every section a
citation names is a heading there, and its tables are the numbers the code uses: the validation's reference
values (benchmarks/gpu_validation.py) and the simulated node's workloads (exporter/demo/scenarios.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import REPO

from exporter.demo.scenarios import WORKLOADS

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_validation

DOC = REPO / "docs" / "h100-reference.md"
SEARCHED = (
    "README.md",
    "CONTRIBUTING.md",
    "CHANGELOG.md",
    "docs",
    "deploy",
    "dashboards",
    "exporter",
    "benchmarks",
    "tests",
)
SUFFIXES = {".md", ".py", ".yml", ".yaml", ".json", ".service"}
CITATION = re.compile(r"(?P<path>[\w./-]*h100-reference\.md)(?:[^\"\n]{0,12}\"(?P<section>[^\"]+)\")?")


def cited_files() -> list[Path]:
    files: list[Path] = []
    for name in SEARCHED:
        path = REPO / name
        files.extend([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES))
    return [path for path in files if "__pycache__" not in path.parts and path != Path(__file__)]


def citations() -> list[tuple[Path, str, str | None]]:
    return [
        (path, match["path"], match["section"])
        for path in cited_files()
        for match in CITATION.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]


def headings() -> list[str]:
    return [line.lstrip("#").strip() for line in DOC.read_text().splitlines() if line.startswith("## ")]


def table(heading_start: str) -> dict[str, list[str]]:
    """The table under the heading that starts with `heading_start`: first cell → the other cells."""
    text = DOC.read_text()
    section = text[text.index(f"\n## {heading_start}") + 1 :].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    body = [row.strip("|").split("|") for row in rows[2:]]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in body}


def test_every_citation_points_at_the_projects_own_page() -> None:
    found = citations()
    assert len({path for path, _, _ in found}) >= 10, "the scan finds the code, docs and tests that cite it"
    for path, cited, _ in found:
        relative = path.relative_to(REPO)
        assert "shared/" not in cited, f"{relative}: {cited} is outside the repository"
        target = (path.parent / cited) if path.parent == DOC.parent and "/" not in cited else REPO / cited
        assert target.resolve() == DOC.resolve(), f"{relative}: {cited} is not docs/h100-reference.md"
    assert DOC.is_file()


def test_every_cited_section_is_a_heading() -> None:
    names = headings()
    sections = [(path, section) for path, _, section in citations() if section]
    assert sections, "some citations name a section"
    for path, section in sections:
        assert any(name.startswith(section) for name in names), (
            f"{path.relative_to(REPO)}: no section {section!r}"
        )


def test_the_source_of_the_figures_is_stated() -> None:
    head = " ".join(DOC.read_text().split("\n## ")[0].split())
    for fact in ("H100 80GB HBM3", "driver 580.159.04", "NVML 13.580.159.04", "benchmarks/gpu_validation.py"):
        assert fact in head, fact


GPM_ROWS = {"idle": "idle", "gemm": "bf16 GEMM", "copy": "device-to-device copy", "tiny": "1000 tiny kernels"}


@pytest.mark.parametrize("name", GPM_ROWS)
def test_gpm_table_is_the_validations_reference(name: str) -> None:
    rows = table("NVML GPM metrics over a 1 s window")
    (cells,) = [cells for workload, cells in rows.items() if workload.startswith(GPM_ROWS[name])]
    util = float(cells[0].split(",")[0])
    ratios = [float(cell) for cell in cells[1:6]]
    power = float(re.match(r"~?(\d+)", cells[6]).group(1))
    assert (util, *ratios, power) == gpu_validation.REFERENCE[name]


SIMULATED = {"idle": "idle", "compute-bound": "bf16 GEMM", "memory-bound": "device-to-device copy"}
SIMULATED["launch-bound"] = "1000 tiny kernels"
FIELDS = ("graphics_active", "sm_active", "sm_occupancy", "tensor_active", "dram_bandwidth_utilization")


@pytest.mark.parametrize("workload", SIMULATED)
def test_the_simulated_workloads_follow_the_gpm_table(workload: str) -> None:
    rows = table("NVML GPM metrics over a 1 s window")
    (cells,) = [cells for name, cells in rows.items() if name.startswith(SIMULATED[workload])]
    simulated = WORKLOADS[workload]
    assert simulated.utilization == pytest.approx(float(cells[0].split(",")[0]) / 100)
    for field, cell in zip(FIELDS, cells[1:6], strict=True):
        assert getattr(simulated, field) == pytest.approx(float(cell) / 100, abs=1e-9), field
    power = float(re.match(r"~?(\d+)", cells[6]).group(1))
    assert simulated.power_watts == pytest.approx(power, rel=0.01)


def test_batch_table_tokens_per_joule_is_tokens_per_second_over_power() -> None:
    rows = table("A decode-like loop across batch sizes")
    assert list(rows) == ["1", "16", "64", "256", "512", "2048"]
    for batch, cells in rows.items():
        power, tokens_per_second, per_joule = (float(cell.replace(",", "")) for cell in cells[6:9])
        assert tokens_per_second / power == pytest.approx(per_joule, rel=0.005), batch
