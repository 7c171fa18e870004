"""The chat page with the real demo model, in headless Chromium: the model's own Markdown
answer is rendered while it streams (the code block is highlighted before the answer ends)."""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_api_support import MODEL, demo_engine
from test_page_support import (
    ask,
    console_errors,
    make_browser,
    needs_chromium,
    open_page,
    wait_done,
)
from test_server_support import served, start_stack

pytestmark = [needs_chromium, pytest.mark.slow]
stack, _settled = served(lambda: start_stack(demo_engine(), model_name=MODEL),
                         settle_timeout=60)


@pytest.fixture(scope="module")
def page(stack):
    driver = make_browser()
    yield open_page(driver, stack.url, MODEL)
    driver.quit()


def test_the_models_markdown_renders_while_it_streams(page):
    page.find_element(By.ID, "temperature").clear()
    page.find_element(By.ID, "temperature").send_keys("0")
    ask(page, "Write a Python function that returns the square of a number.", 60)
    # the highlighted block shows up while the answer is still streaming
    assert WebDriverWait(page, 300, poll_frequency=0.05).until(lambda d: d.execute_script(
        "const m = [...document.querySelectorAll('.msg.assistant')].pop();"
        "return m && m.querySelector('pre code.hljs') ? m.dataset.state : null")) == "streaming"
    div = wait_done(page, 300)
    code = div.find_element(By.CSS_SELECTOR, ".answer pre code.hljs")
    assert code.text.startswith("def square(")
    assert code.find_elements(By.CLASS_NAME, "hljs-keyword")
    assert "```" not in div.find_element(By.CLASS_NAME, "answer").text  # rendered, not raw
    stats = div.find_element(By.CLASS_NAME, "stats").text
    assert "tok/s" in stats and "finish:" in stats
    assert not console_errors(page)
