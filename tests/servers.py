"""Real servers (mlflow server, prefect server) started as subprocesses for a test, and stopped after it; the headless
browser that looks at their pages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(command: list[str], health_url: str, log_path: Path, env: dict | None = None,
                   seconds: float = 180) -> Iterator[subprocess.Popen]:
    """Start `command`, wait until `health_url` answers 200 (failing the test with the server's log if it
    exits or takes longer than `seconds`), and terminate it afterwards."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + seconds
            while not _healthy(health_url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{' '.join(command[:4])} did not start: " + log_path.read_text()[-2000:])
                time.sleep(1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def chromium():
    """Headless Debian chromium through its own chromedriver (same version; selenium-manager never downloads)."""
    if not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("no chromium / chromedriver: `apt-get install -y chromium chromium-driver` "
                    "(scripts/install.sh installs them with the dev extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio", "--window-size=900,820",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
