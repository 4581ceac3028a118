"""The web interface in real headless Chromium (Debian's chromium and chromium-driver, driven by selenium),
after a `mailowl demo` run that requires a token. The screenshots in docs/screenshots/ (the README's) are
written here."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from mailowl.demo.mails import DOWNLOADER

from .server import free_port, stop_process

SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
TOKEN = "demo-token-for-the-browser"
#: runs script if it is ever treated as markup: the page title would change
HOSTILE = "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'<script>.bat"


class Demo:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.log = (directory.parent / "demo.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailowl.cli", "demo", "--dir", str(directory),
                                      "--port", str(self.port), "--token", TOKEN],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not (directory / "demo.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc)
                raise RuntimeError(f"the demo did not finish its story: {(directory.parent / 'demo.log').read_text()}")
            time.sleep(0.2)
        self.story: dict[str, Any] = json.loads((directory / "demo.json").read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def mail(self, key: str) -> dict[str, Any]:
        return next(m for m in self.story["mails"] if m["key"] == key)

    def post_message(self, raw: bytes) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/v2/messages?from=eve%40evil.example&rcpt=bob%40mailowl.example&wait=30", raw,
                         {"Content-Type": "message/rfc822", "Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            answer: dict[str, Any] = json.loads(response.read())
            assert response.status == 200, answer
            return answer
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = Demo(tmp_path_factory.mktemp("browser") / "demo")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # this machine has no network beyond loopback: Chromium must not try to reach Google's services
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1500", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: webdriver.Chrome, css: str) -> Any:
    return WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def log_in(driver: webdriver.Chrome, demo: Demo, token: str) -> None:
    wait_for(driver, "form.login input[name=token]").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()


def test_the_token_is_enforced_and_the_login_form_sets_it(browser: webdriver.Chrome, demo: Demo) -> None:
    browser.delete_all_cookies()
    browser.get(f"{demo.url}/ui/messages")
    assert browser.current_url.startswith(f"{demo.url}/ui/login?next=")  # no token, no page
    log_in(browser, demo, "not the token")
    assert wait_for(browser, "p.error").text == "That is not the token."
    log_in(browser, demo, TOKEN)
    WebDriverWait(browser, 30).until(lambda d: d.current_url == f"{demo.url}/ui/messages")
    assert demo.mail("plain")["support_ids"][0] in browser.page_source


def test_dashboard_chart_and_latest_messages(browser: webdriver.Chrome, demo: Demo) -> None:
    browser.get(f"{demo.url}/ui/?span=1h")
    chart = wait_for(browser, "#chart[data-drawn] canvas")
    assert chart.size["width"] > 300  # uPlot drew the verdicts of the last hour
    legend = browser.find_element(By.CSS_SELECTOR, "#chart").text
    assert "bad" in legend and "pending" in legend
    totals = browser.find_element(By.CSS_SELECTOR, "p.totals-line").text
    assert "bad" in totals
    latest = browser.find_element(By.CSS_SELECTOR, "table.messages").text
    for key in ("downloader", "eicar", "macro", "pdf", "inline", "plain"):
        assert demo.mail(key)["support_ids"][-1] in latest, key
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))


def test_a_rejected_message_shows_its_rule_and_reason(browser: webdriver.Chrome, demo: Demo) -> None:
    rejected = demo.mail("macro")
    browser.get(f"{demo.url}/ui/")
    wait_for(browser, f"a[href='/ui/messages/{rejected['support_ids'][-1]}']").click()
    decided = wait_for(browser, "tr.decided")
    assert "office_macro" in decided.text and "The file contains an Office macro" in decided.text
    assert rejected["replies"][-1] in browser.find_element(By.CSS_SELECTOR, "code.reply").text
    part = browser.find_element(By.CSS_SELECTOR, "article.part").text
    assert "invoice.doc" in part and "answered from the verdict cache: the verdict of job" in part
    assert "Rejected" in browser.find_element(By.CSS_SELECTOR, "pre.logline").text
    # the first attempt: deferred while its job ran, which has since finished
    browser.get(f"{demo.url}/ui/messages/{rejected['support_ids'][0]}")
    heading = wait_for(browser, "article.part h3").text
    assert "pending" in heading and "since finished: bad" in heading
    assert "Deferred" in browser.find_element(By.CSS_SELECTOR, "pre.logline").text
    browser.get(f"{demo.url}/ui/messages/{demo.mail('downloader')['support_ids'][-1]}")
    assert "expressions" in wait_for(browser, "tr.decided").text
    browser.save_screenshot(str(SCREENSHOTS / "message.png"))


def test_search_by_support_id_and_by_sha256(browser: webdriver.Chrome, demo: Demo) -> None:
    deferred = demo.mail("downloader")["support_ids"][0]  # the id the 451 reply named
    browser.get(f"{demo.url}/ui/")
    box = wait_for(browser, "form.search input[name=q]")
    box.send_keys(deferred)
    box.submit()
    WebDriverWait(browser, 30).until(lambda d: d.current_url == f"{demo.url}/ui/messages/{deferred}")
    assert deferred in browser.find_element(By.CSS_SELECTOR, "h1").text
    sha256 = hashlib.sha256(DOWNLOADER).hexdigest()
    box = wait_for(browser, "form.search input[name=q]")
    box.send_keys(sha256)
    box.submit()
    WebDriverWait(browser, 30).until(lambda d: "/ui/search" in d.current_url)
    first = wait_for(browser, "table.jobs tbody tr td a")
    first.click()
    assert wait_for(browser, "dd.hash").text == sha256
    assert "cat.png.bat" in browser.find_element(By.CSS_SELECTOR, "dd.file").text


def test_a_script_in_a_file_name_is_text(browser: webdriver.Chrome, demo: Demo) -> None:
    encoded = "=?utf-8?b?" + base64.b64encode(HOSTILE.encode()).decode() + "?="
    raw = ("From: eve@evil.example\r\nTo: bob@mailowl.example\r\nSubject: =?utf-8?q?=3Cscript=3E?=\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           f"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{encoded}\"\r\n"
           "\r\n@echo off\r\n--b--\r\n").encode()
    answer = demo.post_message(raw)
    browser.get(f"{demo.url}/ui/messages/{answer['support_id']}")
    shown = wait_for(browser, "article.part .file")
    assert shown.text == HOSTILE  # the name, character for character, as text
    browser.get(f"{demo.url}/ui/jobs")
    names = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table.jobs td.file")]
    assert HOSTILE in names
    assert browser.title == "Jobs · mailowl"  # nothing ran
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
