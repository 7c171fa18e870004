"""The chat page at /, driven in headless Chromium: type a question, see the answer stream in,
stop one mid-way; reasoning folds apart from the answer; nothing loads from elsewhere."""

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_page_support import STATIC, ask, last_answer, make_browser, needs_chromium, open_page
from test_server_support import served, start_stack

pytestmark = needs_chromium


def _start():
    s = start_stack()
    real = s.engine.runner.execute
    s.engine.runner.execute = lambda *a: time.sleep(0.01) or real(*a)  # visible streaming
    return s


stack, _settled = served(_start)


@pytest.fixture(scope="module")
def browser():
    driver = make_browser()
    yield driver
    driver.quit()


@pytest.fixture
def page(stack, browser):
    return open_page(browser, stack.url, "tiny")


def test_a_question_gets_a_streamed_answer_with_the_settings(page):
    page.find_element(By.ID, "system").send_keys("You are terse.")
    temperature = page.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    ask(page, "What is a prime number?", 40)
    WebDriverWait(page, 30).until(lambda d: last_answer(d).get_attribute("data-state")
                                  == "done")
    answer = last_answer(page).find_element(By.CLASS_NAME, "answer").text
    assert answer.strip()
    assert page.find_element(By.ID, "status").text.startswith("done")
    body = page.execute_script("return window.bodies[0]")
    assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 40
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "What is a prime number?"}]
    assert page.execute_script("return window.renders") > 10  # the answer came in pieces


def test_stop_ends_a_generation_mid_way(page, stack):
    ask(page, "Tell me a long story.", 400)
    WebDriverWait(page, 30).until(
        lambda d: len(last_answer(d).find_element(By.CLASS_NAME, "answer").text) > 20)
    page.find_element(By.ID, "stop").click()
    WebDriverWait(page, 10).until(lambda d: last_answer(d).get_attribute("data-state")
                                  == "stopped")
    text = last_answer(page).find_element(By.CLASS_NAME, "answer").text
    time.sleep(0.5)
    assert last_answer(page).find_element(By.CLASS_NAME, "answer").text == text
    assert page.find_element(By.ID, "status").text == "stopped"
    assert page.find_element(By.ID, "send").is_enabled()
    stack.settled()  # the server aborted the request and freed its blocks


def test_reasoning_is_folded_apart_from_the_answer(page):
    split = page.execute_script("""return [
        splitReasoning('<think>two plus two</think>\\n\\nIt is 4.'),
        splitReasoning('<think>still thinking'),
        splitReasoning('Let me see. 2+2=4.\\n\\n**Final Answer**\\n\\n\\\\boxed{4}'),
        splitReasoning('Just an answer.')]""")
    assert split[0] == {"reasoning": "two plus two", "answer": "It is 4.", "thinking": False}
    assert split[1] == {"reasoning": "still thinking", "answer": "", "thinking": True}
    assert split[2]["reasoning"] == "Let me see. 2+2=4." and \
        split[2]["answer"].startswith("**Final Answer**")
    assert split[3] == {"reasoning": "", "answer": "Just an answer.", "thinking": False}
    folded = page.execute_script("""
        const div = addMessage('assistant', '');
        render(div, '', '<think>step one</think>The answer.');
        const d = div.querySelector('.reasoning');
        return [d.hidden, d.open, div.querySelector('.reasoning-text').textContent,
                div.querySelector('.answer').textContent];""")
    assert folded == [False, False, "step one", "The answer."]


def test_the_page_loads_nothing_from_elsewhere(page, stack):
    for name in ("index.html", "chat.js", "render.js", "store.js", "chat.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    loaded = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(stack.url + "/") for url in loaded)
    names = {url.rsplit("/", 1)[1] for url in loaded}
    assert {"marked.umd.js", "purify.min.js", "katex.min.js", "highlight.min.js"} <= names
    for name in ("marked", "dompurify", "katex", "highlight"):  # each with its licence
        assert (STATIC / "vendor" / name / "LICENSE").is_file()
    assert sum(f.stat().st_size for f in (STATIC / "vendor").rglob("*")) < 2_000_000
