"""The report in a real browser: Debian's headless Chromium logs into the Airflow UI, opens each
pipeline run's page, clicks its "Fanout report" tab and checks what the page shows against
Airflow's REST API. Screenshots go to tests/report/screenshots/ (ignored by git)."""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from fanout.localstack import PROJECT_ROOT
from tests.e2e.conftest import SMALL_PARAMS
from tests.report.reportkit import rest_figures, rest_tries

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = PROJECT_ROOT / "tests" / "report" / "screenshots"
# Flags that work here: no sandbox (root in a container), nothing fetched from the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def browser(report):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    profile = tempfile.mkdtemp(prefix="fanout-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # Log in the way a person does: the UI's login form.
        driver.get(report.base_url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=username]"))
        driver.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("admin")
        driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(report.passwords["admin"])
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_report(driver, report, dag_id: str) -> str:
    """Open the run's page in the UI, click the report tab, enter its frame; return the frame's URL."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.switch_to.default_content()
    driver.get(f"{report.base_url}/dags/{dag_id}/runs/{urllib.parse.quote(report.runs[dag_id], safe='')}")
    tab = wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='Fanout report']"))
    tab[0].click()
    frame = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "iframe[title='Fanout report']"))
    driver.switch_to.frame(frame)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline svg"))
    driver.switch_to.default_content()
    driver.save_screenshot(str(SCREENSHOTS / f"{dag_id}-in-airflow.png"))
    src = frame.get_attribute("src")
    driver.switch_to.frame(frame)
    return src


def full_page_screenshot(driver, url: str, path: Path) -> None:
    driver.switch_to.default_content()
    driver.get(url)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 1000), 8000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)


@pytest.mark.parametrize("dag_id", ["fanout_preprocess", "fanout_train", "fanout_render"])
def test_the_report_tab_shows_the_run_as_the_rest_api_knows_it(browser, report, dag_id):
    from selenium.webdriver.common.by import By

    run_id = report.runs[dag_id]
    frame_url = open_report(browser, report, dag_id)
    assert urllib.parse.unquote(urllib.parse.urlsplit(frame_url).path) == f"/fanout/runs/{dag_id}/{run_id}"
    assert browser.find_element(By.ID, "run-id").text == run_id

    # The timeline: one row of bars per task instance, one run bar per try.
    tries = rest_tries(report.client, dag_id, run_id)
    bars = {
        e.get_attribute("id")
        for e in browser.find_elements(By.CSS_SELECTOR, "#timeline g[id^='timeline-run-']")
    }
    expected = {
        f"timeline-run-{task}-{index}-{t['try_number']}"
        for (task, index), group in tries.items()
        for t in group
    }
    assert bars == expected
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-instances tr[data-task-id]")
    assert len(rows) == len(tries)
    names = {(ti["task_id"], ti["map_index"]): ti for ti in report.client.task_instances(dag_id, run_id)}
    for row in rows:
        key = (row.get_attribute("data-task-id"), int(row.get_attribute("data-map-index")))
        assert row.get_attribute("data-state") == names[key]["state"]
        assert int(row.get_attribute("data-tries")) == len(tries[key])
        if key[1] >= 0:
            assert row.get_attribute("data-label") == names[key]["rendered_map_index"]

    # The figures: computed from Airflow's REST API alone, they agree with the page.
    figures = rest_figures(report.client, dag_id, run_id)
    for name in ("run_seconds", "wall_seconds", "achieved_parallelism"):
        shown = browser.find_element(By.CSS_SELECTOR, f"[data-figure='{name}']").get_attribute("data-value")
        assert float(shown) == pytest.approx(figures[name], rel=1e-3), name

    # The pipeline: the three asset-chained runs, in order.
    chained = [
        li.get_attribute("data-run-id")
        for li in browser.find_elements(By.CSS_SELECTOR, "#pipeline li[data-run-id]")
    ]
    assert chained == [report.runs[d] for d in ("fanout_preprocess", "fanout_train", "fanout_render")]

    check_outputs(browser, report, dag_id)
    full_page_screenshot(browser, frame_url, SCREENSHOTS / f"{dag_id}-report.png")


def check_outputs(driver, report, dag_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    if dag_id == "fanout_render":
        params = SMALL_PARAMS["fanout_render"]
        wait.until(lambda d: d.execute_script("return document.getElementById('video').readyState") >= 2)
        width, height, duration, error = driver.execute_script(
            "const v = document.getElementById('video'); return [v.videoWidth, v.videoHeight, v.duration, v.error];"
        )
        assert (width, height, error) == (params["width"], params["height"], None)
        assert duration == pytest.approx(params["n_frames"] / params["fps"], abs=0.1)
        driver.execute_script("document.getElementById('video').play();")
        wait.until(lambda d: d.execute_script("return document.getElementById('video').currentTime") > 0)
        sheet_loaded = driver.execute_script(
            "const i = document.getElementById('contact-sheet'); return i.complete && i.naturalWidth;"
        )
        assert sheet_loaded > 0
    elif dag_id == "fanout_train":
        n_trials = SMALL_PARAMS["fanout_train"]["n_trials"]
        lines = driver.find_elements(By.CSS_SELECTOR, "#loss-curves g[id^='loss-val-trial-']")
        assert len(lines) == n_trials
        metrics = report_json(report, report.prefix(dag_id) + "/best/metrics.json")
        best = driver.find_element(
            By.CSS_SELECTOR, f"#loss-curves g#loss-val-trial-{metrics['best']['trial']}"
        )
        assert "(best)" in best.get_attribute("textContent")
        ranked = [
            int(r.get_attribute("data-trial"))
            for r in driver.find_elements(By.CSS_SELECTOR, "#ranking tr[data-trial]")
        ]
        assert ranked == [e["trial"] for e in metrics["ranking"]]
    else:
        manifest = report_json(report, report.prefix(dag_id) + "/merged/manifest.json")
        bars = {
            e.get_attribute("id")
            for e in driver.find_elements(By.CSS_SELECTOR, "#drops g[id^='drops-reason-']")
        }
        assert bars == {f"drops-reason-{reason}" for reason in manifest["dropped"]}
        assert f"{manifest['rows_out']:,}" in driver.find_element(By.ID, "rows").text


def report_json(report, rel: str) -> dict:
    import json

    return json.loads((report.artifact_root / rel).read_text())
