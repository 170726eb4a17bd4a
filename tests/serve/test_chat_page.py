"""The chat page in headless Chromium (Debian's chromium + chromedriver, driven by selenium): upload an image,
ask a question, watch the answer stream in; a screenshot goes to tests/artifacts/chat_page.png."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from serve_helpers import API_KEY, ROOT, image_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,800",
]


@pytest.fixture
def browser():  # noqa: ANN201
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the [dev] extra")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip(
            f"no Chromium here ({CHROMIUM}, {DRIVER}); `make browser` installs Debian's chromium and "
            "chromium-driver (needs root and the Debian mirror)"
        )
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llava-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open_with_image(browser, url: str, tmp_path: Path, png: bytes, key: str, max_tokens: int):  # noqa: ANN001, ANN202
    """Open the page, type the API key and max tokens, attach ``png``; returns a 60 s WebDriverWait once the image
    is pending."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "photo.png"
    photo.write_bytes(png)
    browser.get(url + "/")
    browser.find_element(By.ID, "apikey").send_keys(key)
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys(str(max_tokens))
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "1")
    return wait


def test_chat_page_uploads_image_and_streams_answer(server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    wait = _open_with_image(browser, server.url, tmp_path, image_bytes(160, 120, seed=5), API_KEY, max_tokens=40)
    assert "llavakit chat" in browser.title
    browser.find_element(By.ID, "text").send_keys("What is in this picture?")
    browser.find_element(By.ID, "send").click()
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]")
            or d.find_elements(By.CSS_SELECTOR, ".msg.error")
        )
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), browser.find_element(By.ID, "log").text
    user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
    assert "What is in this picture?" in user.text
    assert user.find_elements(By.TAG_NAME, "img"), "the uploaded image is shown in the conversation"
    answer = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert answer.find_element(By.CLASS_NAME, "text").text.strip()
    assert int(answer.get_attribute("data-chunks")) > 1, "the answer arrived in one piece, not streamed"
    assert answer.get_attribute("data-finish") in ("stop", "length")
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "chat_page.png"))
    # a follow-up turn (multi-turn) and clearing the chat
    browser.find_element(By.ID, "text").send_keys("And the colours?")
    browser.find_element(By.ID, "send").click()
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]")) == 2
            or d.find_elements(By.CSS_SELECTOR, ".msg.error")
        )
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), browser.find_element(By.ID, "log").text
    browser.find_element(By.ID, "clear").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")


def test_chat_page_keeps_the_question_when_the_request_fails(server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    """A refused request (wrong API key) shows the error and puts the typed question and its image back into the
    input, so nothing the user wrote is lost; with the right key it then goes through."""
    from selenium.webdriver.common.by import By

    wait = _open_with_image(browser, server.url, tmp_path, image_bytes(96, 64, seed=7), "not-the-key", max_tokens=8)
    browser.find_element(By.ID, "text").send_keys("A long question I do not want to type twice")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))
    assert "401" in browser.find_element(By.CSS_SELECTOR, ".msg.error").text
    assert browser.find_element(By.ID, "text").get_attribute("value") == "A long question I do not want to type twice"
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "1"
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.user")
    key = browser.find_element(By.ID, "apikey")
    key.clear()
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]"))
    assert browser.find_element(By.ID, "text").get_attribute("value") == ""
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").find_elements(By.TAG_NAME, "img")


def test_chat_page_keeps_the_partial_answer_when_the_stream_fails(pipe, browser, monkeypatch) -> None:  # noqa: ANN001
    """A streamed answer that fails midway (here: the row raises at its 6th token) keeps the text streamed so far
    in its bubble with the error under it; the question goes back into the input to be sent again."""
    import json

    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from serve_helpers import app_server

    from llavakit.serve.app import ServeConfig, create_app
    from llavakit.serve.rows import Row

    push = Row.push

    def fail_sixth(self, t: int) -> None:  # noqa: ANN001
        if self.job.completion_tokens == 6:
            raise RuntimeError("decoding broke down")
        push(self, t)

    monkeypatch.setattr(Row, "push", fail_sixth)
    app = create_app(pipe, ServeConfig(model_name="m"))
    app.state.batcher.eos = set()  # the answer runs on to the failure
    question = "Tell me a long story"
    with app_server(app) as url:
        body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
                "stream": True, "temperature": 0, "top_p": 1, "max_tokens": 32}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        assert "error" in events[-1]  # what the page gets: text, then the error event
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        assert streamed.strip(), "nothing was streamed before the failure"

        browser.get(url + "/")
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys("32")
        browser.find_element(By.ID, "text").send_keys(question)
        browser.find_element(By.ID, "send").click()
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-error]"))
        answer = browser.find_element(By.CSS_SELECTOR, ".msg.assistant[data-error]")
        assert answer.find_element(By.CLASS_NAME, "text").get_attribute("textContent") == streamed
        note = answer.find_element(By.CLASS_NAME, "error-note").text
        assert "decoding broke down" in note and "answer incomplete" in note
        assert "failed" in browser.find_element(By.CSS_SELECTOR, ".msg.user").get_attribute("class")
        assert browser.find_element(By.ID, "text").get_attribute("value") == question
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"


def test_chat_page_says_why_the_conversation_reached_the_image_limit(server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    """Every question re-sends the conversation's images, so past the server's limit (4 here) every later question
    failed with "5 images in the request" and no hint; the page now says that Clear chat starts over."""
    from selenium.webdriver.common.by import By

    from conftest import MAX_IMAGES

    wait = _open_with_image(browser, server.url, tmp_path, image_bytes(64, 48, seed=1), API_KEY, max_tokens=2)
    for turn in range(MAX_IMAGES + 1):
        if turn:
            photo = tmp_path / f"p{turn}.png"
            photo.write_bytes(image_bytes(64, 48, seed=turn + 1))
            browser.find_element(By.ID, "file").send_keys(str(photo))
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "1")
        browser.find_element(By.ID, "text").send_keys(f"question {turn}")
        browser.find_element(By.ID, "send").click()
        wait.until(
            lambda d, n=turn + 1: (
                len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]")) == n
                or d.find_elements(By.CSS_SELECTOR, ".msg.error")
            )
        )
    error = browser.find_element(By.CSS_SELECTOR, ".msg.error").text
    assert f"{MAX_IMAGES + 1} images in the request" in error and "Clear chat starts a new one" in error, error
    browser.find_element(By.ID, "clear").click()
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "p1.png"))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "1")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")


def test_chat_page_defaults_fit_the_server_and_empty_fields_mean_its_defaults(server, browser) -> None:  # noqa: ANN001
    """The page's max tokens field said 128 whatever the server's --max-tokens (64 here), so with the page as it
    opened every question failed with "max_tokens 128 is over this server's limit of 64"; an emptied top_p or max
    tokens field was sent as 0, a 400. The default now fits the limit, and an empty field is left out (the
    server's default), as the seed's already was."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from conftest import MAX_TOKENS

    browser.get(server.url + "/")
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    field = browser.find_element(By.ID, "max_tokens")
    assert int(field.get_attribute("value")) <= MAX_TOKENS and field.get_attribute("max") == str(MAX_TOKENS)
    browser.find_element(By.ID, "text").send_keys("Hi")
    browser.find_element(By.ID, "send").click()
    wait = WebDriverWait(browser, 60)
    done = ".msg.assistant[data-finish]"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, done) or d.find_elements(By.CSS_SELECTOR, ".msg.error"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), browser.find_element(By.ID, "log").text
    for name in ("top_p", "max_tokens"):
        browser.find_element(By.ID, name).clear()
    browser.find_element(By.ID, "text").send_keys("And?")
    browser.find_element(By.ID, "send").click()
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 2 or d.find_elements(By.CSS_SELECTOR, ".msg.error")
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), browser.find_element(By.ID, "log").text


def test_chat_page_enter_that_ends_an_ime_composition_does_not_send(server, browser) -> None:  # noqa: ANN001
    """With an input method (Japanese, Chinese, Korean) Enter confirms the composed characters; the page took that
    Enter as "send" and sent the half-typed question."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.ID, "text").send_keys("にほん")
    browser.execute_script(
        'document.getElementById("text").dispatchEvent(new KeyboardEvent("keydown", '
        '{key: "Enter", keyCode: 229, isComposing: true, bubbles: true, cancelable: true}));'
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.user")
    assert browser.find_element(By.ID, "text").get_attribute("value") == "にほん"
