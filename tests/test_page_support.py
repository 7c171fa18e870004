"""Shared by the chat-page tests (no tests here): headless Chromium on a live server, the page
opened fresh (empty browser storage) with its requests recorded, and screenshots as images."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                    reason="needs Debian's chromium and chromium-driver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,1000"]
STATIC = Path(__file__).parent.parent / "qwq" / "server" / "static"

# records every request body the page sends, and counts changes to the messages
RECORDER = """
    window.bodies = []; window.renders = 0;
    const realFetch = window.fetch;
    window.fetch = (url, opts) => {
      if (opts && opts.body) window.bodies.push(JSON.parse(opts.body));
      return realFetch(url, opts);
    };
    new MutationObserver(() => window.renders++).observe(
      document.getElementById('messages'),
      {subtree: true, childList: true, characterData: true});"""


def make_browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(DRIVER))


def open_page(browser, url: str, model: str, clear: bool = True):
    """The page, loaded with the model's name shown; clear: with empty browser storage."""
    browser.get(url + "/")
    if clear:
        browser.execute_script("localStorage.clear()")
        browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text == model)
    browser.execute_script(RECORDER)
    return browser


def ask(page, text: str, max_tokens: int) -> None:
    page.find_element(By.ID, "max-tokens").clear()
    page.find_element(By.ID, "max-tokens").send_keys(str(max_tokens))
    page.find_element(By.ID, "prompt").send_keys(text)
    page.find_element(By.ID, "send").click()


def last_answer(page):
    return page.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]


def wait_done(page, timeout: float = 60):
    WebDriverWait(page, timeout).until(
        lambda d: last_answer(d).get_attribute("data-state") in ("done", "stopped", "error"))
    return last_answer(page)


def image(element):
    """A screenshot of the element, as an RGB PIL image."""
    from PIL import Image
    return Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")


def colors(img) -> dict[tuple[int, int, int], int]:
    """Pixel count per colour."""
    return {c: n for n, c in img.getcolors(maxcolors=1 << 20)}


def console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
