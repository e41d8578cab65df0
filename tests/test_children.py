"""Stopping child processes (cprfl_repro/children.py): a process and its descendants."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from cprfl_repro.children import stop_pids

SLEEPER = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
          "time.sleep(60)"


def test_a_process_and_its_children_are_stopped():
    parent = subprocess.Popen([sys.executable, "-c", SLEEPER])
    deadline = time.monotonic() + 30
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(parent.pid).children()[0]
    stop_pids([parent.pid], timeout=10)
    assert parent.wait(timeout=10) is not None
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
