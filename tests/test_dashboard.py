"""The VisualDL dashboard as a person sees it: two short runs of the demo Conformer are trained on
a generated demo corpus, `docker/visualdl.sh` serves their exp/ folder, and headless Chromium
(Debian's chromium + chromium-driver, through Selenium) opens the scalar page. Both runs must be
listed, and the train/loss chart must show the logged points: its tooltip, read at several places
along the chart, gives each run's value at a step, which must be the value training logged there.
The page's screenshot is kept in artifacts/dashboard/ (not committed)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from paddle_asr.train.logs import read_visualdl
from tests.conftest import REPO

ARTIFACTS = REPO / "artifacts" / "dashboard"
RUN_CONFIG = f"""\
base: {REPO}/recipes/demo/conf/conformer.yaml
optim:
  lr: {{lr}}
training:
  max_epoch: 2
  batch_size: 4
  log_interval: 1
  average_num: 1
"""
RUNS = {"conformer": 0.002, "conformer_lr4e-3": 0.004}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_runs(tiny_recipe) -> Path:
    """exp folder with two trained demo runs (VisualDL logs inside each run's visualdl/)."""
    exp = tiny_recipe / "exp" / "dashboard"
    for name, lr in RUNS.items():
        config = tiny_recipe / "conf" / f"dashboard_{name}.yaml"
        config.parent.mkdir(exist_ok=True)
        config.write_text(RUN_CONFIG.format(lr=lr))
        proc = subprocess.run([sys.executable, "-m", "paddle_asr.cli", "train", "--config", str(config),
                               "--exp_dir", str(exp / name)], cwd=tiny_recipe, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return exp


@pytest.fixture(scope="module")
def dashboard(demo_runs):
    """docker/visualdl.sh serving the runs on a free port; yields its base URL."""
    port = free_port()
    env = dict(os.environ, PADDLE_ASR_PYTHON=sys.executable)
    log = (demo_runs / "visualdl_server.log").open("w")
    proc = subprocess.Popen(["bash", str(REPO / "docker" / "visualdl.sh"), "--logdir", str(demo_runs),
                             "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{url}/app/api/runs", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (demo_runs / "visualdl_server.log").read_text()
            assert time.time() < deadline, "VisualDL did not answer within 60 s"
            time.sleep(0.5)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1000",
                "--lang=en-US"):
        options.add_argument(arg)
    # The system driver, matching the system browser: Selenium must not try to download one.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_server_listens_on_the_loopback_only(dashboard):
    url, proc = dashboard
    port = int(url.rsplit(":", 1)[1])
    server_pids = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
    listening = [c for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert {c.pid for c in listening} <= server_pids


def tooltip_rows(driver) -> dict[str, dict[str, str]]:
    """The chart tooltip's table as {run: {column: text}} (VisualDL draws it as HTML over the chart)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.echarts > div'))"
        ".filter(e => !e.querySelector('canvas') && e.offsetParent !== null).map(e => e.innerText)")
    rows: dict[str, dict[str, str]] = {}
    for text in texts:
        lines = [[c.strip() for c in line.split("\t") if c.strip()] for line in text.splitlines() if line.strip()]
        if not lines or lines[0][:1] != ["Runs"]:
            continue
        header = lines[0]
        for cells in lines[1:]:
            rows[cells[0]] = dict(zip(header, cells))
    return rows


def same_figure(shown: str, logged: float) -> bool:
    """VisualDL prints 5 significant digits."""
    return math.isclose(float(shown), logged, rel_tol=1e-4, abs_tol=1e-9) or f"{logged:.5g}" == shown


def test_the_scalar_page_lists_the_runs_and_draws_the_logged_loss(demo_runs, dashboard, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = dashboard
    # VisualDL names the runs as paths from the folder above the log directory.
    logged = {f"dashboard/{name}/visualdl": read_visualdl(demo_runs / name / "visualdl")[0]["train/loss"]
              for name in RUNS}
    assert all(len(points) >= 6 for points in logged.values())  # 2 epochs x 6 updates, every one logged

    browser.get(f"{url}/app/scalar")
    wait = WebDriverWait(browser, 60)
    wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "canvas")))
    # The run selector lists every run, by its folder under the log directory.
    wait.until(lambda d: all(run in d.find_element(By.TAG_NAME, "body").text for run in logged))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "train" in body and "dev" in body  # the two tag groups

    search = browser.find_element(By.CSS_SELECTOR, "input[placeholder*='Search tags']")
    search.send_keys("^train/loss$")
    wait.until(lambda d: len([c for c in d.find_elements(By.TAG_NAME, "canvas") if c.is_displayed()]) == 1)
    (canvas,) = [c for c in browser.find_elements(By.TAG_NAME, "canvas") if c.is_displayed()]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    time.sleep(2)  # the chart animates its lines in

    checked_steps = set()
    width = canvas.size["width"]
    # Across the plot area at many places: the tooltip shows the step nearest the pointer, and
    # between two steps (or while the chart is still drawing) it may not show at all.
    for fraction in [0.12 + 0.06 * i for i in range(14)]:
        ActionChains(browser).move_to_element_with_offset(canvas, int(width * (fraction - 0.5)), 0).perform()
        try:
            WebDriverWait(browser, 3).until(lambda d: len(tooltip_rows(d)) == len(logged))
        except Exception:
            continue  # between two points the tooltip may not show
        rows = tooltip_rows(browser)
        for run, row in rows.items():
            points = dict(logged[run])
            step = int(row["Step"])
            assert step in points, f"{run}: the chart shows step {step}, which was never logged"
            assert same_figure(row["Value"], points[step]), (run, step, row["Value"], points[step])
            values = [v for _, v in logged[run]]
            assert same_figure(row["Min."], min(values)) and same_figure(row["Max."], max(values)), (run, row)
            checked_steps.add(step)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "visualdl_train_loss.png"))
    assert len(checked_steps) >= 3, f"the tooltip showed only steps {sorted(checked_steps)}"

    # The chart itself is drawn: the canvas has pixels in the runs' line colours, not only background.
    coloured = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) {"
        "  const r = d[i], g = d[i+1], b = d[i+2];"
        "  if (d[i+3] > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++; } return n;", canvas)
    assert coloured > 200, f"only {coloured} coloured pixels: the loss lines were not drawn"
