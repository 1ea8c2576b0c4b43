"""Acceptance 4: the web page in headless Chromium (Debian's chromium + chromium-driver through Selenium, no browser
download): load it, send a prompt, wait for the streamed answer, save a screenshot; the answer text appears and the
draft-accepted tokens are marked. Skips when Chromium, chromedriver or selenium is absent."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")
PROMPT = "Once upon a time, there was a little girl named Lily."  # the untrained draft gets 3 tokens accepted
MAX_TOKENS = 60


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_streams_an_answer_with_draft_tokens_marked(server, generator, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = generator.generate([{"role": "user", "content": PROMPT}], max_new_tokens=MAX_TOKENS)
    drafted = sum(expected.from_draft)
    assert drafted > 0, "precondition: the draft should get some tokens accepted for this prompt"
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "stories-chat" in d.find_element(By.ID, "model").text)
    assert "chat" in browser.find_element(By.ID, "model").text
    limit = browser.find_element(By.ID, "max_tokens")
    limit.clear()
    limit.send_keys(str(MAX_TOKENS))
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant .stats")
               and f"{MAX_TOKENS} tokens" in d.find_element(By.CSS_SELECTOR, ".assistant .stats").text
               and d.find_element(By.ID, "send").is_enabled())
    browser.save_screenshot(str(tmp_path / "page.png"))
    answer = browser.find_element(By.CSS_SELECTOR, ".assistant > span:first-child")
    assert browser.execute_script("return arguments[0].textContent", answer) == expected.text
    marked = answer.find_elements(By.CSS_SELECTOR, "span.draft")
    pieces_of_draft = [p for p, d in zip(_pieces(generator, expected.token_ids), expected.from_draft) if d and p]
    assert [browser.execute_script("return arguments[0].textContent", m) for m in marked] == pieces_of_draft
    stats = browser.find_element(By.CSS_SELECTOR, ".assistant .stats").text
    assert f"tau {expected.stats.tau:.2f}" in stats and f"{drafted} from the draft" in stats
    assert "tokens/s" in browser.find_element(By.ID, "live").text
    assert (tmp_path / "page.png").stat().st_size > 0


def _pieces(generator, token_ids: list[int]) -> list[str]:
    from eaglespec.decoding.text import token_pieces

    return token_pieces(generator.tokenizer, token_ids)
