"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) loads the page of a running ``fednode sim
--dashboard`` and sees the chart grow past two rounds and every node in the graph, a
crashed one marked.

Marked ``browser``; skipped, saying why, where Chromium, its driver or selenium are
missing (``scripts/test`` installs them where it runs as root with apt). With
``FEDNODE_DASHBOARD_SCREENSHOT=<path>`` it saves a screenshot there (the one in the
README: ``docs/img/dashboard.png``). Traffic: 127.0.0.1 only; every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.net]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
WAIT_S = 120
ROOT = Path(__file__).resolve().parents[1]


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


def _url_of(proc: subprocess.Popen[str]) -> str:
    """The dashboard URL the simulator prints at start (waits at most WAIT_S)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + WAIT_S
    seen = ""
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"no dashboard URL from fednode sim; it printed:\n{seen}")


def test_the_page_follows_a_running_simulation(tmp_path: Path) -> None:
    why = _missing()
    if why is not None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    spec = tmp_path / "two_tier_crash.toml"  # the shipped two-tier spec, one client crashing
    shipped = (ROOT / "topologies" / "two_tier_3x10.toml").read_text()
    spec.write_text(shipped + '\n[[faults]]\ntype = "crash"\nnode = 9\nround = 3\n')
    cmd = [
        sys.executable,
        "-m",
        "fednode.cli",
        "sim",
        "--topology",
        str(spec),
        "--task",
        "digits:numpy",
        "--local-epochs",
        "1",
        "--rounds",
        "40",
        "--dashboard",
        "127.0.0.1:0",
        "--dashboard-round-pause",
        "0.5",
        "--dashboard-linger",
        "30",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = None
    try:
        url = _url_of(proc)
        driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        driver.set_page_load_timeout(WAIT_S)
        driver.get(url)
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.2)

        def rounds(d: webdriver.Chrome) -> int:
            return int(d.find_element(By.ID, "acc-chart").get_attribute("data-rounds") or 0)

        wait.until(lambda d: rounds(d) >= 2)
        first = rounds(driver)
        assert "running" in driver.find_element(By.ID, "status").text
        assert proc.poll() is None  # the simulation is still going
        points = driver.find_elements(By.CSS_SELECTOR, "#acc-chart circle.point.acc")
        assert len(points) >= 2
        # every node of the spec is drawn: 1 coordinator, 3 aggregators, 30 clients
        nodes = driver.find_elements(By.CSS_SELECTOR, "#graph circle.node")
        roles = [n.get_attribute("class").split()[1] for n in nodes]
        assert len(nodes) == 34
        assert sorted(set(roles)) == ["aggregator", "client", "coordinator"]
        assert roles.count("client") == 30
        assert len(driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")) == 34
        assert driver.find_elements(By.CSS_SELECTOR, "#bytes-chart rect.bar.up")
        # live: more rounds arrive without a reload, and the crashed client is marked
        wait.until(lambda d: rounds(d) >= first + 3)
        dead = driver.find_elements(By.CSS_SELECTOR, "#graph circle.node.dead")
        assert [d.get_attribute("data-node") for d in dead] == ["n9"]
        shot = os.environ.get("FEDNODE_DASHBOARD_SCREENSHOT")
        if shot:
            wait.until(lambda d: rounds(d) >= 12)
            driver.save_screenshot(shot)
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # stops the simulation at its next event
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT_S)
    assert proc.returncode == 130  # "stopped: the simulation was interrupted"
