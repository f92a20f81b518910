"""Small pieces the benchmark scripts share: free ports, the exporter's environment, the verdict line."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exporter_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, so `python -m exporter` runs this tree."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def verdict(failures: list[str]) -> int:
    """Print each failure and PASS or the count; the exit code for the script."""
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0
