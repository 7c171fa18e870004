"""The chat page made for a reasoning model, in headless Chromium against a live server (the
tiny model): Markdown, KaTeX maths and highlighted code, checked in the DOM and in screenshots;
model output that tries to run script runs nothing; the reasoning fold with its token count and
time; tokens/s and finish reason; regenerate, edit-and-resend, copy; conversations and settings
kept in the browser."""

import colorsys
import re
import time

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_api_support import thinking
from test_page_support import (
    ask,
    colors,
    console_errors,
    image,
    last_answer,
    make_browser,
    needs_chromium,
    open_page,
    wait_done,
)
from test_server_support import served, start_stack

pytestmark = needs_chromium
stack, _settled = served(start_stack)

ANSWER = r"""# Fibonacci

The numbers grow like **powers** of $\varphi = \frac{1+\sqrt{5}}{2}$:

\[ F_n = \frac{\varphi^n - \psi^n}{\sqrt{5}} \]

```python
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
```

- costs $O(\varphi^n)$ time
- and `fib(30)` takes a while
"""


@pytest.fixture(scope="module")
def browser():
    driver = make_browser()
    yield driver
    driver.quit()


@pytest.fixture
def page(stack, browser):
    return open_page(browser, stack.url, "tiny")


def show(page, content, reasoning=""):
    """An answer rendered by the page's own code, as a streamed one is."""
    page.execute_script("""
        const div = addMessage('assistant', '');
        render(div, arguments[1], arguments[0]);
        div.dataset.state = 'done';""", content, reasoning)
    return last_answer(page)


def test_markdown_maths_and_code_render_as_katex_and_highlighted_blocks(page, tmp_path):
    div = show(page, ANSWER)
    answer = div.find_element(By.CLASS_NAME, "answer")
    assert answer.find_element(By.TAG_NAME, "h1").text == "Fibonacci"
    assert answer.find_element(By.TAG_NAME, "strong").text == "powers"
    assert len(answer.find_elements(By.CSS_SELECTOR, "ul > li")) == 2
    assert answer.find_element(By.CSS_SELECTOR, "li code").text == "fib(30)"
    # maths: KaTeX nodes, each carrying its TeX in MathML; the display one on its own line
    tex = [e.get_attribute("textContent") for e in answer.find_elements(
        By.CSS_SELECTOR, ".katex-mathml annotation[encoding='application/x-tex']")]
    assert tex == [r"\varphi = \frac{1+\sqrt{5}}{2}",
                   r"F_n = \frac{\varphi^n - \psi^n}{\sqrt{5}}", r"O(\varphi^n)"]
    display = answer.find_element(By.CSS_SELECTOR, ".katex-display")
    assert display.find_elements(By.CSS_SELECTOR, ".mfrac .frac-line")  # a real fraction
    # code: a highlighted Python block, the keyword in its own span
    code = answer.find_element(By.CSS_SELECTOR, "pre code.hljs.language-python")
    assert code.find_element(By.CLASS_NAME, "hljs-keyword").text == "def"
    assert "fib(n - 1)" in code.text
    # the screenshots: the formula is drawn with KaTeX's own fonts (loaded from this server),
    # as ink on the page; the code block sits on its grey panel in several colours
    WebDriverWait(page, 10).until(lambda d: d.execute_script(
        "return [...document.fonts].some(f => f.family === 'KaTeX_Math' "
        "&& f.status === 'loaded')"))
    formula, block = image(display), image(code.find_element(By.XPATH, ".."))
    formula.save(tmp_path / "formula.png")
    block.save(tmp_path / "code.png")
    ink = sum(n for c, n in colors(formula).items() if max(c) < 100)
    assert formula.width > 150 and formula.height > 40 and ink > 200
    panel = colors(block)
    assert max(panel, key=panel.get) == (246, 248, 250)  # the code background
    assert len(hues(panel)) >= 2  # keywords (red) and numbers (blue) in their own colours
    assert not console_errors(page)


def hues(counts: dict) -> set[int]:
    """The colour families (sixths of the hue circle) with at least 10 saturated pixels."""
    families: dict[int, int] = {}
    for (r, g, b), n in counts.items():
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        if s > 0.4 and v > 0.3:
            families[int(h * 6) % 6] = families.get(int(h * 6) % 6, 0) + n
    return {f for f, n in families.items() if n >= 10}


PAYLOADS = [
    "<img src=x onerror=\"window.pwned.push('img')\">",
    "<script>window.pwned.push('script')</script>",
    "<svg onload=\"window.pwned.push('svg')\"></svg>",
    "<iframe srcdoc=\"<script>parent.pwned.push('iframe')</script>\"></iframe>",
    "<details open ontoggle=\"window.pwned.push('details')\">x</details>",
    "<a href=\"javascript:window.pwned.push('a')\">click</a>",
    "[link](javascript:window.pwned.push('link'))",
    "<p style=\"position:fixed;inset:0\" onmouseover=\"window.pwned.push('p')\">cover</p>",
    r"$\href{javascript:window.pwned.push('tex')}{x}$",
    "```\n</code></pre><img src=x onerror=\"window.pwned.push('code')\">\n```",
]


def assert_inert(page):
    messages = page.find_element(By.ID, "messages")
    time.sleep(0.5)  # an image error or a toggle event would have fired by now
    for link in messages.find_elements(By.CSS_SELECTOR, ".answer a"):
        link.click()
    assert page.execute_script("return window.pwned") == []
    found = page.execute_script("""
        const all = [...document.querySelectorAll('#messages *')];
        return {tags: all.filter(e => /^(img|script|svg|iframe|style)$/i.test(e.tagName))
                         .map(e => e.tagName),
                handlers: all.flatMap(e => [...e.attributes].map(a => a.name))
                             .filter(n => n.startsWith('on')),
                links: all.filter(e => /^\\s*javascript:/i.test(e.getAttribute('href') || ''))
                          .length,
                styled: all.filter(e => e.closest('.answer, .reasoning-text')
                                        && !e.closest('.katex') && e.hasAttribute('style'))
                           .length}""")
    assert found == {"tags": [], "handlers": [], "links": 0, "styled": 0}


def test_model_output_that_tries_to_run_script_runs_nothing(page, stack):
    page.execute_script("window.pwned = []")
    show(page, "\n\n".join(PAYLOADS), reasoning=PAYLOADS[0] + PAYLOADS[1])
    assert_inert(page)
    # the same through a conversation stored in the browser, shown when the page loads
    page.execute_script("""localStorage.setItem('qwq.conversations.v1', JSON.stringify({
        current: 'x', conversations: [{id: 'x', title: 't', messages: [
          {role: 'user', content: arguments[0]},
          {role: 'assistant', content: arguments[0], reasoning: arguments[0]}]}]}))""",
                        "\n\n".join(PAYLOADS))
    open_page(page, stack.url, "tiny", clear=False)
    page.execute_script("window.pwned = []")
    assert len(page.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    assert_inert(page)
    csp = httpx.get(stack.url + "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp


def test_reasoning_folds_with_its_tokens_and_time_and_the_answer_shows_its_speed(page, stack):
    page.find_element(By.ID, "temperature").clear()
    page.find_element(By.ID, "temperature").send_keys("0")
    page.find_element(By.ID, "thinking-budget").send_keys("6")
    Select(page.find_element(By.ID, "loop-control")).select_by_value("off")
    Select(page.find_element(By.ID, "language")).select_by_value("en")
    with thinking(stack):
        ask(page, "Why is the sky blue?", 20)
        div = wait_done(page)
    body = page.execute_script("return window.bodies[0]")
    assert body["max_thinking_tokens"] == 6 and body["loop_control"] == "off"
    assert body["language"] == "en" and body["temperature"] == 0
    details = div.find_element(By.CLASS_NAME, "reasoning")
    assert details.is_displayed() and details.get_attribute("open") is None  # folded
    meta = details.find_element(By.CLASS_NAME, "reasoning-meta").text
    assert re.fullmatch(r"· \d+ tokens · \d+\.\d s", meta)
    assert 4 <= int(meta.split()[1]) <= 8  # the budget's 6 tokens, give or take the close
    details.find_element(By.TAG_NAME, "summary").click()
    assert div.find_element(By.CLASS_NAME, "reasoning-text").text.strip()
    stats = div.find_element(By.CLASS_NAME, "stats").text
    assert re.fullmatch(r"20 tokens · [\d.]+ tok/s · finish: length", stats)


def test_regenerate_edit_and_copy(page, stack):
    page.find_element(By.ID, "temperature").clear()
    page.find_element(By.ID, "temperature").send_keys("0")
    ask(page, "Name a fruit.", 6)
    first = wait_done(page).find_element(By.CLASS_NAME, "answer").text
    last_answer(page).find_element(By.CLASS_NAME, "regenerate").click()
    WebDriverWait(page, 30).until(lambda d: len(d.execute_script("return window.bodies")) == 2)
    again = wait_done(page).find_element(By.CLASS_NAME, "answer").text
    assert again == first and len(page.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    bodies = page.execute_script("return window.bodies")
    assert bodies[1]["messages"] == bodies[0]["messages"]  # the same question, asked again

    user = page.find_element(By.CSS_SELECTOR, ".msg.user")
    user.find_element(By.CLASS_NAME, "edit").click()
    box = user.find_element(By.CSS_SELECTOR, ".editor textarea")
    box.clear()
    box.send_keys("Name a vegetable.")
    user.find_element(By.CLASS_NAME, "resend").click()
    WebDriverWait(page, 30).until(lambda d: len(d.execute_script("return window.bodies")) == 3)
    wait_done(page)
    assert page.execute_script("return window.bodies[2].messages") == [
        {"role": "user", "content": "Name a vegetable."}]
    assert [m.text.split("\n")[1] for m in page.find_elements(By.CSS_SELECTOR, ".msg.user")] \
        == ["Name a vegetable."]

    page.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": stack.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    copy = last_answer(page).find_element(By.CLASS_NAME, "copy")
    copy.click()
    WebDriverWait(page, 5).until(lambda d: copy.text == "Copied")
    copied = page.execute_async_script(
        "navigator.clipboard.readText().then(arguments[arguments.length - 1])")
    stored = page.execute_script(
        "const d = store.load(); return d.conversations[0].messages[1].content")
    assert copied == stored and copied.strip()


def test_conversations_and_settings_are_kept_in_the_browser(page, stack):
    page.find_element(By.ID, "thinking-budget").send_keys("77")
    page.find_element(By.ID, "system").click()  # a change is saved when the field is left
    ask(page, "First question", 3)
    wait_done(page)
    page.find_element(By.ID, "reset").click()
    ask(page, "Second question", 3)
    wait_done(page)
    open_page(page, stack.url, "tiny", clear=False)  # a reload
    titles = [b.text for b in page.find_elements(By.CSS_SELECTOR, "#conversations .open")]
    assert titles == ["Second question", "First question"]
    assert page.find_element(By.CSS_SELECTOR, ".msg.user .answer").text == "Second question"
    assert page.find_element(By.ID, "thinking-budget").get_attribute("value") == "77"
    page.find_elements(By.CSS_SELECTOR, "#conversations .open")[1].click()
    assert page.find_element(By.CSS_SELECTOR, ".msg.user .answer").text == "First question"
    assert len(page.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1
    page.find_elements(By.CSS_SELECTOR, "#conversations .delete")[0].click()
    titles = [b.text for b in page.find_elements(By.CSS_SELECTOR, "#conversations .open")]
    assert titles == ["First question"]
