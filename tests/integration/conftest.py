"""Every test under tests/integration/ is marked `integration`: it runs real external components (a real
Prometheus, promtool, amtool, systemd-analyze, or the exporter or another script as a process).

`make test-unit` (`pytest -m "not integration"`) leaves them out; `make test-integration` runs only them.
The mark is set here, by directory, so that a new file in this folder cannot forget it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this folder's: filter by path.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
