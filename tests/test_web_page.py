"""The web page at / (service/webpage.py, service/web/): its headers and assets over HTTP, then the page itself in a
real headless browser (Chromium or Chrome through chromedriver and Selenium) against a real service on the toy
model, which copies words into en and reverses them into fr (loadtest/toy_task.py).

The browser and its driver: CHROME_BIN and CHROMEDRIVER name them, else chromedriver on PATH (or in
$CHROMEWEBDRIVER, as on GitHub's runners) with the first of chromium, chromium-browser, google-chrome whose
version matches it. Debian: `apt-get install chromium chromium-driver` (scripts/install_system_deps.sh does it).
Selenium is given both paths, so Selenium Manager never downloads anything. Without them the browser tests
skip, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from loadtest.toy_task import expected_translation
from service.webpage import CONTENT_SECURITY_POLICY
from tests.helpers import AppClient, ServerProcess, build_app

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "sudo apt-get install -y chromium chromium-driver (make test runs scripts/install_system_deps.sh)"
WAIT_SECONDS = 20.0  # the longest any browser wait here may take; each is usually a few milliseconds
API_KEY = "web-page-key"
ENGLISH_TEXT = "quebec november quebec golf juliet juliet"  # detected as English (tests/test_detection.py)


# --- the page over HTTP, in-process: no browser needed --------------------------------------------------------------


class Markup(HTMLParser):
    """Every tag with its attributes, and the text of inline <script> and <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style") and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        yield client


async def test_the_page_has_strict_headers_and_loads_nothing_from_elsewhere(client):
    page = await client.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    again = await client.http.get("/", headers={"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await client.http.head("/")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-security-policy"] == CONTENT_SECURITY_POLICY

    markup = Markup()
    markup.feed(page.text)
    # No inline script or style for the policy to block, and no handlers in attributes.
    assert markup.inline == []
    for tag, attrs in markup.tags:
        assert tag != "style" and "style" not in attrs and not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert tag != "script" or attrs.get("src"), "inline script"
    urls = [value for _, attrs in markup.tags for name, value in attrs.items() if name in ("src", "href") and value is not None]
    assert urls, "the page links its assets"
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), f"{url} is not on this origin"

    assets = [url for url in urls if url.startswith("/static/")]
    assert sorted(urlsplit(url).path for url in assets) == ["/static/app.css", "/static/app.js", "/static/favicon.svg"]
    for url in assets:
        response = await client.http.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable", url
        assert response.headers["x-content-type-options"] == "nosniff"
        kind = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}[Path(urlsplit(url).path).suffix]
        assert response.headers["content-type"].startswith(kind)
        body = response.text
        if kind == "image/svg+xml":  # its namespace is a name, not a URL that is fetched
            body = body.replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert "href" not in body
        assert "://" not in body and "@import" not in body, f"{url} names another origin"
        assert "url(" not in body, f"{url} loads something"
        # The ETag is the version the page asks for; unversioned requests are revalidated.
        unversioned = await client.http.get(urlsplit(url).path)
        assert unversioned.headers["cache-control"] == "no-cache" and unversioned.content == response.content
        assert unversioned.headers["etag"] == f'"{url.split("?v=")[1]}"'


async def test_only_the_packaged_assets_exist(client):
    for path in ("/static/nope.js", "/static/", "/static/index.html", "/static/%2e%2e%2fapp.py", "/static/web/app.js"):
        response = await client.http.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.http.post("/")).status_code == 405


async def test_the_page_and_its_assets_are_open_when_api_keys_are_on(toy_model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(API_KEY + "\n")
    async with AppClient(build_app(toy_model_dir, api_keys_file=keys)) as client:
        assert (await client.http.get("/")).status_code == 200
        assert (await client.http.get("/static/app.js")).status_code == 200
        assert (await client.http.get("/languages")).status_code == 401


# --- the page in a browser ---------------------------------------------------------------------------------------------


@functools.cache
def _major_version(program: str) -> int | None:
    """The major version `program --version` prints, or None when it does not run (a snap shim without snapd...)."""
    try:
        result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)\.\d+\.\d+", result.stdout)
    return int(found.group(1)) if result.returncode == 0 and found else None


def find_browser_and_driver() -> tuple[str, str]:
    """(browser, chromedriver) paths; LookupError saying what is missing."""
    driver = os.environ.get("CHROMEDRIVER")
    if not driver and os.environ.get("CHROMEWEBDRIVER"):
        candidate = Path(os.environ["CHROMEWEBDRIVER"]) / "chromedriver"
        driver = str(candidate) if candidate.is_file() else None
    driver = driver or shutil.which("chromedriver")
    if not driver or _major_version(driver) is None:
        raise LookupError(f"no chromedriver (looked at $CHROMEDRIVER, $CHROMEWEBDRIVER, PATH): {driver or 'none found'}")
    wanted = _major_version(driver)
    if os.environ.get("CHROME_BIN"):
        candidates = [os.environ["CHROME_BIN"]]
    else:
        candidates = [path for path in map(shutil.which, BROWSERS) if path]
    working = [path for path in candidates if _major_version(path) is not None]
    if not working:
        raise LookupError(f"no browser that runs among {candidates or list(BROWSERS)}")
    # chromedriver drives only its own major version: GitHub's runners have Chrome with its driver next to a
    # Chromium snapshot of another version.
    matching = [path for path in working if _major_version(path) == wanted]
    return (matching or working)[0], driver


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    try:
        return find_browser_and_driver()
    except LookupError as missing:
        message = f"{missing}; install: {INSTALL}, or set CHROME_BIN and CHROMEDRIVER"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must not skip the browser tests")
        pytest.skip(message)


@pytest.fixture(scope="module")
def driver(browser_paths, tmp_path_factory) -> Iterator[Any]:
    browser, chromedriver = browser_paths
    work = tmp_path_factory.mktemp("chrome")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1000",
        "--lang=en-US", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
        "--force-device-scale-factor=1", f"--user-data-dir={work / 'profile'}",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_service = Service(executable_path=chromedriver, log_output=str(work / "chromedriver.log"))
    chrome = webdriver.Chrome(options=options, service=driver_service)
    chrome.set_page_load_timeout(WAIT_SECONDS)
    chrome.set_script_timeout(WAIT_SECONDS)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def service(toy_model_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("web-service") / "service.log"
    with ServerProcess.service(toy_model_dir, log_path=log) as server:
        yield server


def wait(driver, seconds: float = WAIT_SECONDS):
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def by_id(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def open_page(driver, url: str, *, languages: bool = True) -> None:
    """Loads the page, its console empty before; with `languages`, waits until /languages has filled the target
    picker."""
    driver.get_log("browser")
    driver.get(url + "/")
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if languages:
        wait(driver).until(lambda d: len(by_id(d, "target-lang").find_elements(By.TAG_NAME, "option")) > 0)


def choose(driver, select_id: str, value: str) -> None:
    Select(by_id(driver, select_id)).select_by_value(value)


def type_text(driver, text: str) -> None:
    area = by_id(driver, "source-text")
    area.clear()
    area.send_keys(text)


def text_of(driver, element_id: str) -> str:
    return by_id(driver, element_id).get_property("textContent")


def translation_shown(driver) -> str:
    """Waits until the output is filled and nothing is in flight; the output's text."""
    wait(driver).until(lambda d: text_of(d, "output") and by_id(d, "translate-form").get_attribute("aria-busy") == "false")
    return text_of(driver, "output")


def error_shown(driver) -> str:
    wait(driver).until(lambda d: text_of(d, "error"))
    return text_of(driver, "error")


# The focused element's id, whether it matches :focus-visible, and its outline's style and width.
FOCUSED = """
const element = document.activeElement, style = getComputedStyle(element);
return [element.id, element.matches(':focus-visible'), style.outlineStyle, style.outlineWidth];
"""


def console_problems(driver) -> list[dict]:
    """What the console logged above information: errors (a resource the policy blocked, a 404) and warnings."""
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


@pytest.mark.slow
def test_a_toy_sentence_into_french_in_the_browser(driver, service):
    open_page(driver, service.url)
    # The pickers hold every language of /languages under its name, sorted by name; "Detect language" first.
    with urlopen(service.url + "/languages", timeout=10) as response:
        details = json.load(response)["details"]
    names = sorted((d["name"], d["code"]) for d in details)
    options = driver.execute_script("return Array.from(arguments[0].options, o => [o.text, o.value])", by_id(driver, "source-lang"))
    assert options[0] == ["Detect language", "auto"]
    assert [tuple(option) for option in options[1:]] == names
    targets = driver.execute_script("return Array.from(arguments[0].options, o => [o.text, o.value])", by_id(driver, "target-lang"))
    assert [tuple(option) for option in targets] == names
    assert ("French", "fr") in names and by_id(driver, "target-lang").get_property("value") == "en"  # the browser's language

    # Watch the busy state while the translation runs.
    driver.execute_script(
        "window.busyStates = [];"
        "new MutationObserver(changes => changes.forEach(c => window.busyStates.push(c.target.getAttribute('aria-busy'))))"
        ".observe(document.querySelector('.result'), {attributes: true, attributeFilter: ['aria-busy']});"
    )
    type_text(driver, "alpha bravo charlie.")
    choose(driver, "source-lang", "en")
    choose(driver, "target-lang", "fr")
    by_id(driver, "translate").click()
    assert translation_shown(driver) == "charlie bravo alpha." == expected_translation("alpha bravo charlie.", "fr")
    assert by_id(driver, "output").get_attribute("lang") == "fr"
    assert by_id(driver, "source-text").get_attribute("lang") == "en"
    assert driver.execute_script("return window.busyStates") == ["true", "false"]
    assert text_of(driver, "error") == "" and text_of(driver, "detected") == ""
    assert by_id(driver, "alternatives-box").get_property("hidden") is True

    # Nothing went wrong in the console (a blocked script, style or icon would be logged there), and everything
    # the page loaded came from the service.
    assert console_problems(driver) == []
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(service.url + "/") for url in loaded), loaded
    assert {urlsplit(url).path for url in loaded} >= {"/static/app.js", "/static/app.css", "/languages", "/translation"}


@pytest.mark.slow
def test_auto_detection_shows_the_detected_language(driver, service):
    open_page(driver, service.url)
    assert by_id(driver, "source-lang").get_property("value") == "auto"
    type_text(driver, ENGLISH_TEXT)
    choose(driver, "target-lang", "fr")
    by_id(driver, "translate").click()
    assert translation_shown(driver) == expected_translation(ENGLISH_TEXT, "fr")
    wait(driver).until(lambda d: text_of(d, "detected"))
    assert re.fullmatch(r"Detected language: English \(\d+% sure\)\.", text_of(driver, "detected"))
    assert by_id(driver, "source-text").get_attribute("lang") == "en"
    # The source picker describes itself with the detection, for screen readers.
    assert by_id(driver, "source-lang").get_attribute("aria-describedby") == "detected"
    # Picking a language clears it.
    choose(driver, "source-lang", "en")
    wait(driver).until(lambda d: text_of(d, "detected") == "")


@pytest.mark.slow
def test_html_mode_keeps_the_markup_and_shows_it_as_text(driver, service):
    open_page(driver, service.url)
    by_id(driver, "format-html").click()
    type_text(driver, "<p><b>alpha</b> bravo charlie.</p>")
    choose(driver, "source-lang", "en")
    choose(driver, "target-lang", "fr")
    by_id(driver, "translate").click()
    assert translation_shown(driver) == "<p>charlie bravo <b>alpha</b>.</p>"
    # Shown as markup, never rendered into the page.
    assert driver.execute_script("return arguments[0].children.length", by_id(driver, "output")) == 0


@pytest.mark.slow
def test_alternatives_are_listed(driver, service):
    open_page(driver, service.url)
    type_text(driver, "alpha bravo charlie.")
    choose(driver, "source-lang", "en")
    choose(driver, "target-lang", "fr")
    field = by_id(driver, "alternatives")
    field.clear()
    field.send_keys("3")
    by_id(driver, "translate").click()
    assert translation_shown(driver) == "charlie bravo alpha."
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alternatives-list li"))
    shown = [item.get_property("textContent") for item in driver.find_elements(By.CSS_SELECTOR, "#alternatives-list li")]
    # Exactly what the API answers for the same request.
    body = {"payload": {"fromLang": "en", "toLang": "fr", "alternatives": 3, "records": [{"id": "1", "text": "alpha bravo charlie."}]}}
    request = Request(service.url + "/translation", json.dumps(body).encode(), {"content-type": "application/json"})
    with urlopen(request, timeout=10) as response:
        answered = json.load(response)["result"][0]["alternatives"]
    assert 1 <= len(shown) <= 3 and shown == answered and "charlie bravo alpha." not in shown
    assert by_id(driver, "alternatives-list").get_attribute("lang") == "fr"
    assert by_id(driver, "alternatives-box").is_displayed()


@pytest.mark.slow
def test_empty_text_and_bad_options_are_errors_in_the_alert_region(driver, service):
    open_page(driver, service.url)
    alert = by_id(driver, "error")
    assert alert.get_attribute("role") == "alert" and text_of(driver, "error") == ""
    by_id(driver, "translate").click()
    assert error_shown(driver) == "Type some text to translate."
    assert driver.switch_to.active_element == by_id(driver, "source-text")
    type_text(driver, "alpha")
    field = by_id(driver, "alternatives")
    field.clear()
    field.send_keys("9")
    by_id(driver, "translate").click()
    wait(driver).until(lambda d: "Alternatives" in text_of(d, "error"))
    assert driver.switch_to.active_element == field
    assert text_of(driver, "output") == ""


@pytest.mark.slow
def test_keyboard_tab_order_focus_styles_and_ctrl_enter(driver, service):
    open_page(driver, service.url)
    order = []
    for step in range(9):
        if step:
            ActionChains(driver).send_keys(Keys.TAB).perform()
        element_id, visible, style, width = driver.execute_script(FOCUSED)
        order.append(element_id)
        # Every stop shows where focus is: a solid outline at least 2 px wide.
        assert visible and style == "solid" and float(width.removesuffix("px")) >= 2, (element_id, visible, style, width)
    # The text first (it has focus on load), then the languages, the options, the button, the key.
    assert order == [
        "source-text", "source-lang", "swap", "target-lang", "format-text", "alternatives", "translate", "api-key", "",
    ]  # fmt: skip
    assert driver.execute_script("return document.activeElement.getAttribute('href')") == "/openapi.json"

    # Arrow keys move within the format radios.
    by_id(driver, "format-text").send_keys(Keys.ARROW_RIGHT)
    assert by_id(driver, "format-html").is_selected()
    by_id(driver, "format-html").send_keys(Keys.ARROW_LEFT)
    assert by_id(driver, "format-text").is_selected()

    # Ctrl+Enter in the text translates (and adds no line).
    choose(driver, "source-lang", "en")
    choose(driver, "target-lang", "fr")
    area = by_id(driver, "source-text")
    area.click()
    area.send_keys("delta echo golf.")
    ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
    assert translation_shown(driver) == "golf echo delta."
    assert area.get_property("value") == "delta echo golf."
    assert driver.switch_to.active_element == area

    # The swap button (Enter on a focused button) swaps the languages and takes the translation as the text.
    swap = by_id(driver, "swap")
    swap.send_keys(Keys.ENTER)
    wait(driver).until(lambda d: by_id(d, "source-lang").get_property("value") == "fr")
    assert by_id(driver, "target-lang").get_property("value") == "en"
    assert area.get_property("value") == "golf echo delta." and text_of(driver, "output") == ""


@pytest.mark.slow
def test_every_control_has_a_label_and_an_accessible_name(driver, service):
    open_page(driver, service.url)
    controls = driver.find_elements(By.CSS_SELECTOR, "input, select, textarea, button")
    names = {control.get_attribute("id"): control.accessible_name for control in controls}
    assert names == {
        "source-text": "Text to translate", "source-lang": "From", "swap": "Swap languages", "target-lang": "To",
        "format-text": "Text", "format-html": "HTML", "alternatives": "Alternatives (0–5)", "translate": "Translate",
        "api-key": "API key",
    }  # fmt: skip
    for control in controls:
        if control.tag_name != "button":
            assert driver.execute_script("return arguments[0].labels.length", control) >= 1, control.get_attribute("id")
        else:
            assert control.get_attribute("type") in ("button", "submit")
    assert by_id(driver, "output").get_attribute("aria-live") == "polite"
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert driver.execute_script("return document.querySelectorAll('fieldset > legend').length") == 1


@pytest.mark.slow
def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_the_tab(driver, toy_model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(API_KEY + "\n")
    env = {"MT_API_KEYS_FILE": str(keys), "MT_MAX_TEXT_CHARS": "40"}
    with ServerProcess.service(toy_model_dir, env, tmp_path / "service.log") as server:
        open_page(driver, server.url, languages=False)
        message = error_shown(driver)
        assert "missing or invalid API key" in message and "(401 unauthorized)" in message, message
        assert by_id(driver, "target-lang").find_elements(By.TAG_NAME, "option") == []

        # A key, then Enter: the languages load and the error goes.
        by_id(driver, "api-key").send_keys(API_KEY + Keys.ENTER)
        wait(driver).until(lambda d: by_id(d, "target-lang").find_elements(By.TAG_NAME, "option"))
        assert text_of(driver, "error") == ""
        type_text(driver, "alpha bravo")
        choose(driver, "source-lang", "en")
        choose(driver, "target-lang", "fr")
        by_id(driver, "translate").click()
        assert translation_shown(driver) == "bravo alpha"

        # The service's own error, in its words: a text over MT_MAX_TEXT_CHARS.
        type_text(driver, "alpha bravo charlie delta echo foxtrot golf")
        by_id(driver, "translate").click()
        message = error_shown(driver)
        assert "(413 payload_too_large)" in message, message
        assert text_of(driver, "output") == ""  # no translation of another text left beside the error

        # The key stays for this tab (sessionStorage), not beyond it (nothing in localStorage).
        open_page(driver, server.url)
        assert by_id(driver, "api-key").get_property("value") == API_KEY and text_of(driver, "error") == ""
        assert driver.execute_script("return [sessionStorage.length, localStorage.length]") == [1, 0]
        driver.execute_script("sessionStorage.clear()")
