"""GPU attribution's process lookup against real processes: a listening server, its child and a sibling.

The rest of the attribution tests (fakes only) are tests/unit/test_attribution.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from helpers import free_port, wait_for

from exporter.attribution import listener_process_tree


def test_real_listener_process_tree_finds_a_server_and_its_child() -> None:
    port = free_port()
    # A parent that listens on the port and spawns a child, like an engine with worker processes.
    script = (
        "import http.server, subprocess, sys, threading;"
        f"s = http.server.HTTPServer(('127.0.0.1', {port}), http.server.BaseHTTPRequestHandler);"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
        "print(child.pid, flush=True);"
        "s.serve_forever()"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(process.stdout.readline())
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # same launcher: us
    try:
        tree = wait_for(lambda: listener_process_tree(port), 10, "the listener to appear")
        assert process.pid in tree and child_pid in tree
        assert sibling.pid not in tree
        with_siblings = listener_process_tree(port, include_siblings=True)
        assert tree <= with_siblings and sibling.pid in with_siblings
        assert os.getpid() not in with_siblings  # the launcher itself is not a worker
        assert listener_process_tree(free_port()) is None
    finally:
        os.kill(child_pid, signal.SIGKILL)
        for spawned in (process, sibling):
            spawned.kill()
            spawned.wait()
