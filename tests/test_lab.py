"""`make lab` works: a headless JupyterLab on the repository serves the notebooks and offers the
cprfl kernel. Jupyter's own state goes to a temporary folder, so nothing is written to ~."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "cprfl"
READY_WAIT_S = 60.0  # a cold JupyterLab start on a loaded 2-core machine takes 5-20 s


def _get(base: str, token: str, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get_json(base: str, token: str, path: str):
    status, body = _get(base, token, path)
    assert status == 200, f"GET {path}: HTTP {status}: {body[:300]!r}"
    return json.loads(body)


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks_and_the_cprfl_kernel(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(tmp_path / sub)
    env.pop("JUPYTER_PATH", None)  # the venv's own share/jupyter (the cprfl kernel) is found regardless
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False"]
    log_path = tmp_path / "lab.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _get(base, token, "/api/status")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab not ready after {READY_WAIT_S:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)

        # The token is required: without it the API refuses.
        bare = urllib.request.Request(base + "/api/contents/notebooks")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare, timeout=10)
        assert refused.value.code == 403

        listing = _get_json(base, token, "/api/contents/notebooks")
        assert listing["type"] == "directory" and listing["path"] == "notebooks"
        served = {e["name"] for e in listing["content"] if e["type"] == "notebook"}
        on_disk = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert served == on_disk

        kernels = _get_json(base, token, "/api/kernelspecs")["kernelspecs"]
        assert KERNEL in kernels, f"the server offers kernels {sorted(kernels)}, not {KERNEL!r}"
        assert kernels[KERNEL]["spec"]["language"] == "python"

        status, page = _get(base, token, "/lab")  # the JupyterLab front end, not only the bare server
        assert status == 200 and b"JupyterLab" in page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
