"""The app in a real browser: Debian's chromium, driven by PyPI playwright, against `python app.py`.

`python app.py` runs in a subprocess exactly as on a Hugging Face Space (port from GRADIO_SERVER_PORT), with the
bundled checkpoints. Screenshots go to pytest's tmp_path; set APP_SCREENSHOT=docs/app_screenshot.png to also
refresh the README's screenshot of the Compare tab.
"""
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
STORY_TIMEOUT_MS = 120_000  # a busy 2-core machine can be slow

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no browser: {CHROMIUM} is absent (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    """`python app.py` on a free port; its URL once it says it is up."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSTORIES_APPROACH")}  # bundled weights
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 180
    try:
        while not any("Running on local URL" in line for line in seen):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("python app.py did not start:\n" + "".join(seen))
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(STORY_TIMEOUT_MS)  # a loaded CPU makes everything slow, not wrong
    page.goto(app_url)
    page.get_by_role("button", name="Generate").wait_for()
    yield page
    page.close()


def textbox_filled(page, elem_id: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#{elem_id} textarea')?.value.length > 0",
                           timeout=STORY_TIMEOUT_MS)


def finished(page, *elem_ids: str) -> None:
    """Wait until every story is finished: its detected-tags line no longer shows "…"."""
    page.wait_for_function("ids => ids.map(id => document.getElementById(id)?.innerText || '')"
                           ".every(text => text.includes('Detected tags:') && !text.includes('…'))",
                           arg=list(elem_ids), timeout=STORY_TIMEOUT_MS)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_tick_two_tags_generate_and_watch_the_story_appear(page, tmp_path):
    tags = page.locator("#story-tags")
    tags.get_by_label("Dialogue").check()
    tags.get_by_label("Twist").check()
    set_number(page, "story-max-tokens", 40)
    page.get_by_role("button", name="Generate").click()
    textbox_filled(page, "story")
    page.wait_for_function("() => document.querySelector('#story-seed-used textarea')?.value.length > 0",
                           timeout=STORY_TIMEOUT_MS)
    page.get_by_text("Tags requested: Dialogue, Twist").wait_for(timeout=STORY_TIMEOUT_MS)
    page.screenshot(path=tmp_path / "story.png", full_page=True)
    assert page.locator("#story textarea").input_value().strip()
    assert (tmp_path / "story.png").stat().st_size > 10_000


def test_a_blank_seed_box_means_a_fresh_random_seed_each_time(page):
    assert page.locator("#story-seed textarea").input_value() == ""
    set_number(page, "story-max-tokens", 3)
    seeds = []
    for _ in range(2):
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("seen => !['', ...seen].includes(document.querySelector('#story-seed-used textarea')"
                               "?.value)", arg=seeds, timeout=STORY_TIMEOUT_MS)
        seeds.append(page.locator("#story-seed-used textarea").input_value())
        finished(page, "story-details")  # a click while a story streams is ignored
    assert len(set(seeds)) == 2 and all(seed.isdigit() for seed in seeds)
    assert page.locator("#story-seed textarea").input_value() == ""  # still blank: the next story is random too


def test_compare_shows_both_approaches_side_by_side(page, tmp_path):
    page.get_by_role("tab", name="Compare").click()
    tags = page.locator("#compare-tags")
    tags.get_by_label("Dialogue").check()
    tags.get_by_label("MoralValue").check()
    set_number(page, "compare-max-tokens", 150 if os.environ.get("APP_SCREENSHOT") else 40)
    page.locator("#compare-seed textarea").fill("42")
    page.get_by_role("button", name="Compare").click()
    textbox_filled(page, "story1")
    textbox_filled(page, "story2")
    finished(page, "details1", "details2")
    first, second = (page.locator(f"#{i} textarea").input_value() for i in ("story1", "story2"))
    assert first and second and first != second
    page.screenshot(path=tmp_path / "compare.png", full_page=True)
    if os.environ.get("APP_SCREENSHOT"):
        page.screenshot(path=os.environ["APP_SCREENSHOT"], full_page=True)
