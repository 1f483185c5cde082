"""The web page in a real headless Chromium: paste or upload FASTA, read the table, download the CSV.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skipped only when they
are absent. The browser talks to a real uvicorn on 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'protadapt[serve]'")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import bbb_test_rows, fasta_text, fit_run, live_server  # noqa: E402

from protadapt.serve import ModelService  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless browser test needs Chromium: apt-get install chromium chromium-driver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,900")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    run = fit_run(tmp_path_factory.mktemp("browser_run"), "--task", "bbb", "--method", "lora",
                  "data.calibration_fraction=0.3")
    service = ModelService.load(run)
    with live_server(service) as url:
        yield url, service


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_paste_fasta_submit_read_table_download_csv_and_screenshot(page_url, browser, tmp_path):
    url, service = page_url
    rows = bbb_test_rows(5)
    expected = service.predict_frame(rows[["id", "sequence"]])
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#metrics tbody tr"))
    assert browser.find_element(By.ID, "model-name").text == "bbb · lora · tiny"
    card = browser.find_element(By.ID, "card").text
    assert "auroc" in card and "Trained" in card

    browser.find_element(By.ID, "fasta").send_keys(fasta_text(rows))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == len(rows))
    header = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#results thead th")]
    assert header == list(expected.columns) == ["id", "prediction", "prob_0", "prob_1", "set_0.1", "set_size_0.1",
                                                "nearest_train_identity", "in_domain"]
    table = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
             for row in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert [row[0] for row in table] == rows["id"].tolist()
    assert [int(row[1]) for row in table] == expected["prediction"].tolist()
    np.testing.assert_allclose([float(row[3]) for row in table], expected["prob_1"], atol=6e-5)  # shown to 4 places
    assert [row[4] for row in table] == expected["set_0.1"].fillna("").tolist()
    assert [row[7] for row in table] == [str(flag).lower() for flag in expected["in_domain"]]
    assert browser.find_element(By.ID, "status").text == "5 predictions"

    csv = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('download').href)"
        ".then((r) => r.text()).then(done, (e) => done('failed: ' + e));")
    downloaded = pd.read_csv(io.StringIO(csv))
    assert list(downloaded.columns) == list(expected.columns)
    assert downloaded["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(downloaded["prob_1"], expected["prob_1"], atol=1e-6)

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    check_png(screenshot, min_bytes=20_000)


def test_upload_and_a_bad_record_shows_the_one_line_error(page_url, browser, tmp_path):
    url, _ = page_url
    upload = tmp_path / "query.fasta"
    upload.write_text(">good\nKWKLFKK\n>bad\nKW1K\n")
    browser.get(url + "/")
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: driver.find_element(By.ID, "fasta").get_attribute("value") == upload.read_text())
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda driver: driver.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == (
        "request.fasta line 3 (id 'bad'): character '1' at position 3 is not an amino acid; "
        "allowed: ACDEFGHIKLMNPQRSTVWY plus X B Z U O")
    assert not browser.find_element(By.ID, "results-section").is_displayed()


def check_png(path: Path, min_bytes: int) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 500, (width, height)
