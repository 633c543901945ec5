"""The web dashboard (``/ui``): served publicly, its data only through the authenticated API;
driven in a real headless Chromium (Debian's ``chromium`` + ``chromedriver``, via selenium).

The browser tests skip when Chromium or its driver is missing, except under ``CI=true``, where
that is a failure (``scripts/test`` installs them). Set ``OPTPILOT_TEST_SCREENSHOTS=DIR`` to keep
a screenshot of each page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import settings_for
from tests.service.jobrun import live_server, work
from tests.service.test_insights import team_a
from tuner.evidence.export import dump_line

KEY = "ui-test-key"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1280,1000")


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("chromedriver")


# -- without a browser -------------------------------------------------------------------------


def test_dashboard_is_public_and_knows_whether_a_key_is_needed(migrated_url: str) -> None:
    with TestClient(create_app(settings_for(migrated_url, api_keys=[KEY]))) as c:
        root = c.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui"
        page = c.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<meta name="optpilot-auth" content="required">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            r = c.get(f"/ui/static/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
            assert "http://" not in r.text and "https://" not in r.text, "no external URL"
        assert "http" not in page.text.replace("http-equiv", "")
        assert c.get("/v1/jobs").status_code == 401  # the data stays behind the key
    with TestClient(create_app(settings_for(migrated_url))) as c:
        assert '<meta name="optpilot-auth" content="none">' in c.get("/ui").text


# -- in Chromium -------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"browser tests are required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def severe(driver: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [e for e in entries if e.get("level") == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    folder = os.environ.get("OPTPILOT_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the UI is database-blind
def test_dashboard_in_a_browser(browser: Any, migrated_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30)
    app = create_app(settings_for(migrated_url, api_keys=[KEY]))
    with live_server(app) as base, httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as api:
        def launch(n_trials: int) -> str:
            r = api.post("/v1/jobs", json={"workload": "rosenbrock", "n_trials": n_trials,
                                           "seed": 0, "optimizers": ["adam", "adamw"]})
            assert r.status_code == 202, r.text
            job_id: str = r.json()["id"]
            return job_id

        finished = launch(5)
        work(migrated_url, 5)

        # The page loads without a key, asks for one, and calls nothing until it has it.
        browser.get(f"{base}/")
        assert browser.current_url == f"{base}/ui"
        banner = wait.until(ec.visibility_of_element_located((By.ID, "banner")))
        assert "needs an API key" in banner.text
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.ID, "key-save").click()

        # Jobs, live: a queued job turns completed while the page polls.
        row = f'tr[data-job="{finished}"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        assert "completed" in browser.find_element(By.CSS_SELECTOR, row).text
        live = launch(2)
        live_row = f'tr[data-job="{live}"]'
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, live_row), "queued"))
        work(migrated_url, 2)
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, live_row), "completed"))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, live_row), "2/2"))
        shot(browser, "jobs")

        # A finished job's page shows its report, plots included (fetched with the key).
        browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "job-head"), "completed"))
        frame = wait.until(ec.presence_of_element_located((By.ID, "report")))
        wait.until(lambda d: "Tuning report" in (frame.get_attribute("srcdoc") or ""))
        browser.switch_to.frame(frame)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "svg")) >= 3)
        assert "Optimization history" in browser.find_element(By.TAG_NAME, "body").text
        assert browser.find_elements(By.CSS_SELECTOR, "svg circle")
        browser.switch_to.default_content()
        assert frame.size["height"] > 1000, "the frame grows to the report's height"
        assert browser.find_element(By.ID, "report-download").get_attribute(
            "href").startswith("blob:")
        shot(browser, "job")

        # Ask for a recommendation and see ranked candidates with their rationale.
        browser.get(f"{base}/ui#/recommend")
        form = wait.until(ec.presence_of_element_located((By.ID, "recommend-form")))
        Select(form.find_element(By.NAME, "model_family")).select_by_value("cnn")
        form.find_element(By.NAME, "num_parameters").send_keys("1.1e7")
        form.find_element(By.NAME, "batch_size").send_keys("256")
        form.find_element(By.NAME, "memory_budget_gb").send_keys("16")
        form.find_element(By.NAME, "namespace").send_keys("team-a")
        assert form.find_element(By.NAME, "use_history").is_selected()
        browser.find_element(By.ID, "recommend-submit").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".candidate")) == 3)
        cards = browser.find_elements(By.CSS_SELECTOR, ".candidate")
        assert cards[0].find_element(By.TAG_NAME, "h3").text.startswith("#1")
        assert cards[0].find_elements(By.CSS_SELECTOR, "ul.rationale li")
        assert "fits the memory budget" in cards[0].text
        evidence = cards[0].find_elements(By.CSS_SELECTOR, "ul.evidence li")
        assert evidence and evidence[0].text.startswith("published (similarity")
        shot(browser, "recommend")

        # Browse results with filters.
        browser.get(f"{base}/ui#/results")
        form = wait.until(ec.presence_of_element_located((By.ID, "results-form")))
        Select(form.find_element(By.NAME, "model_family")).select_by_value("other")
        Select(form.find_element(By.NAME, "workload")).select_by_value("rosenbrock")
        form.find_element(By.NAME, "max_parameters").send_keys("1e3")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 2)
        assert "2 of 2 result(s) decided" in browser.find_element(By.ID, "results-summary").text
        assert "model_family=other" in browser.current_url
        shot(browser, "results")
        form = browser.find_element(By.ID, "results-form")
        Select(form.find_element(By.NAME, "model_family")).select_by_value("cnn")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "results-out"), "No result matches"))

        # Where the rules were wrong: a namespace's rules against its jobs, most wrong first.
        history = "".join(f"{dump_line(o)}\n" for o in team_a())
        r = api.post("/v1/history", content=history,
                     headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200, r.text
        browser.get(f"{base}/ui#/insights")
        form = wait.until(ec.presence_of_element_located((By.ID, "insights-form")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "insights-summary"),
                                                    "in namespace default"))
        field = form.find_element(By.NAME, "namespace")
        field.clear()
        field.send_keys("team-a")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "insights-summary"),
                                                    "5 finished job(s) in namespace team-a"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#insights tbody tr")
        assert rows[0].get_attribute("data-rule") == "small_problem"
        assert "33% of 3" in rows[0].text and "×2 (3)" in rows[0].text
        assert "a-s2" in rows[0].text
        assert "won 60% of 5" in browser.find_element(By.ID, "insights-summary").text
        assert "Never fired:" in browser.find_element(By.ID, "insights-silent").text
        assert "namespace=team-a" in browser.current_url
        shot(browser, "insights")

        assert severe(browser) == [], "the pages log no console errors"

        # A bad namespace: the API's 422 names the field (the browser logs the 422 itself).
        form = browser.find_element(By.ID, "insights-form")
        field = form.find_element(By.NAME, "namespace")
        field.clear()
        field.send_keys("Not A Namespace")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "insights-out"), "query.namespace"))
