"""`workbench app`: user errors in one line, and a real server that prints its URL and serves the pages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

WORKBENCH = [sys.executable, "-m", "workbench.cli.main"]


def _run(*args, timeout=60):
    return subprocess.run([*WORKBENCH, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_a_missing_traces_folder_is_one_line_and_exit_2(tmp_path):
    result = _run("app", "--traces", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.startswith("error: --traces")
    assert "Traceback" not in result.stderr
    bad = _run("app", "--traces", str(tmp_path), "--images", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "--images" in bad.stderr


def test_the_server_prints_its_url_binds_loopback_and_serves(traces_dir):
    process = subprocess.Popen([*WORKBENCH, "app", "--traces", str(traces_dir), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("Attention workbench: http://127.0.0.1:"), line
        url = line.split()[2]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "model?bundle=llama-maps", timeout=5) as response:
                    assert response.status == 200 and b"Attention workbench" in response.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        with urllib.request.urlopen(url + "_dash-layout", timeout=5) as response:
            assert b"wb-selection" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=20)
