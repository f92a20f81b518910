"""The Grafana dashboards of tpw-exporter, generated from the modules beside this file.

    python dashboards/build.py            regenerate dashboards/*.json (what Grafana provisions)
    python dashboards/build.py --check    exit 1, naming the files, if a checked-in JSON is not what the
                                          modules generate (the dashboard tests run this and compare the JSON)

The JSON beside this file is the artefact Grafana loads (classic dashboard model, schema version 42); the
modules are its only source: edit them, regenerate, commit both. grafana.py builds panels, variables and
the dashboard envelope, tpw.py holds what the TPW dashboards share, and fleet.py, node_gpu.py, endpoint.py
and investigation.py lay out one dashboard each.

Some queries are *conditional*: they return data only in a particular situation (an alert fires, an
engine restarts, a price is configured). They are marked with `conditional="why"`; the reason is appended
to the panel description for the reader and listed by `conditional_targets()` for the test that runs every
query against a real Prometheus (test_dashboard_queries.py), which requires every other query to
return data on the demo node.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The modules beside this file, also when this file is loaded by path (as the tests do).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import endpoint
import fleet
import investigation
import node_gpu
from grafana import SCHEMA_VERSION, Board
from tpw import WHEN_CARBON, WHEN_PRICE, WHEN_QUEUE, WHEN_SLO, WHEN_TPOT

__all__ = [
    "BOARDS",
    "SCHEMA_VERSION",
    "WHEN_CARBON",
    "WHEN_PRICE",
    "WHEN_QUEUE",
    "WHEN_SLO",
    "WHEN_TPOT",
    "build_all",
    "conditional_targets",
    "render",
]

HERE = Path(__file__).resolve().parent

BOARDS: dict[str, Callable[[], Board]] = {
    fleet.FILE: fleet.dashboard,
    node_gpu.FILE: node_gpu.dashboard,
    endpoint.FILE: endpoint.dashboard,
    investigation.FILE: investigation.dashboard,
}


def build_all() -> dict[str, tuple[dict[str, Any], dict[tuple[str, str], str]]]:
    """{file name: (dashboard JSON, {(panel id | "annotation:NAME", refId): why it may be empty})}."""
    result = {}
    for name, make in BOARDS.items():
        board = make()
        model = board.to_json()
        result[name] = (model, board.conditional)
    return result


def render(model: dict[str, Any]) -> str:
    """The JSON text of a dashboard, as checked in."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def conditional_targets() -> dict[str, dict[tuple[str, str], str]]:
    """{dashboard uid: {(panel id | "annotation:NAME", refId): why}} for the query test."""
    return {model["uid"]: conditional for model, conditional in build_all().values()}


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, verify) every dashboard JSON; 1 when a checked-in file is stale."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="verify instead of writing; exit 1 on a difference"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder of the JSON files (default: beside this)"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, (model, _) in build_all().items():
        path = args.out / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run `python dashboards/build.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
