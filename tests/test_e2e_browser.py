"""End to end in a real headless browser (Debian's chromium driven by playwright): the app runs as a subprocess,
exactly as `python app.py --port N` would. One server and one browser page are shared by the steps below, which
run in order: chat with a streamed reply (the model's own default settings), an empty message and a bad seed
refused with a warning that keeps the chat, a reload that keeps the chat and the settings, a document answered
with its source, a tiny fine-tune whose loss plot fills in. Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
DOC_FACT = ("Project Zebra notes. The launch code for Project Zebra is 4417-ALPHA. The project lead is Dr. Ines "
            "Marlow, and the rocket is assembled in the town of Kirkwall.")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser test needs it")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    home = tmp_path_factory.mktemp("studio_home")
    port = _free_port()
    env = dict(os.environ, LLM_STUDIO_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.pop("STUDIO_USER", None)
    env.pop("STUDIO_PASSWORD", None)
    log = open(home / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        print(f"app answered after {time.time() - t0:.1f} s")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((home / "app.log").read_text()[-3000:])


def _bot_text(page) -> str:
    msgs = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']")
    if msgs.count() == 0:
        return ""
    return msgs.last.inner_text()


def _fill_until_kept(page, selector: str, value: str, tries: int = 3) -> None:
    """Fill a number box and leave it; again if a late re-render put the old value back."""
    for _ in range(tries):
        page.locator(selector).fill(value)
        page.locator(selector).press("Tab")
        page.wait_for_timeout(300)
        if page.locator(selector).input_value() == value:
            return


def _no_error_badges(page) -> None:
    """Gradio's red "Error" badges (status trackers in the error state) cover outputs; none may show."""
    assert page.locator("[data-testid='status-tracker'] .error:visible").count() == 0


def _bad_input_keeps_the_chat(page) -> None:
    """An empty message and a seed of 1e30: a warning in words, no error badges, the chat and the typed text kept."""
    from playwright.sync_api import expect

    toasts = page.locator("[data-testid='toast-body']")
    box = page.locator("#chat-input textarea")
    box.fill("")
    page.locator("#chat-send").click()
    expect(toasts.filter(has_text="Type a message first")).to_be_visible(timeout=10_000)
    seed = page.locator("#chat-seed input")
    seed.fill("1e30")
    seed.press("Tab")
    box.fill("Tell me more.")
    page.locator("#chat-send").click()
    expect(toasts.filter(has_text="Seed must be a whole number")).to_be_visible(timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "01b_bad_input.png"), full_page=True)
    expect(page.locator("#chatbot")).to_contain_text("Paris")
    expect(page.locator("#chatbot")).to_contain_text("tok/s")
    expect(box).to_have_value("Tell me more.")
    _no_error_badges(page)
    assert "Overflow" not in page.inner_text("body")
    seed.fill("-1")
    seed.press("Tab")
    box.fill("")


def _reload_keeps_chat_and_settings(page) -> None:
    """After a reload the chat, the settings and the list of earlier chats come back from this browser's storage
    (the other browser's chat is not among them)."""
    from playwright.sync_api import expect

    system = page.locator("#chat-system textarea")
    system.fill("You are a terse geography tutor.")
    system.press("Tab")
    page.wait_for_timeout(1500)  # the settings are written to the browser's storage on change
    page.reload()
    expect(page.locator("#chatbot")).to_contain_text("Paris", timeout=30_000)
    expect(page.locator("#chatbot")).to_contain_text("What is the capital of France?")
    expect(system).to_have_value("You are a terse geography tutor.")
    expect(page.locator("#chat-temperature input[type=number]")).to_have_value("0")
    page.locator("#chat-history input").click()
    expect(page.get_by_role("option", name="What is the capital of France?", exact=False)).to_be_visible()
    expect(page.get_by_role("option", name="Name three colours", exact=False)).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "01c_after_reload.png"), full_page=True)
    page.keyboard.press("Escape")
    _no_error_badges(page)


def test_browser_end_to_end(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=30_000)  # a loaded 2-core CI machine can take more than the default 5 s to render
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(app_url)
        expect(page.locator("#chat-input textarea")).to_be_visible()

        # ---- chat: a streamed reply with its stats line, while a second browser (own storage) chats too ---------
        other_ctx = browser.new_context(viewport={"width": 1000, "height": 800})
        other = other_ctx.new_page()
        other.goto(app_url)
        expect(other.locator("#chat-input textarea")).to_be_visible()
        for pg in (page, other):
            # the settings start at the model's own defaults once it has loaded (SmolLM2's system prompt)
            expect(pg.locator("#chat-status")).to_contain_text("ready", timeout=240_000)
            expect(pg.locator("#chat-system textarea")).to_have_value(re.compile("SmolLM"), timeout=10_000)
            temp = pg.locator("#chat-temperature input[type=number]")
            temp.fill("0")
            temp.press("Tab")
        page.locator("#chat-input textarea").fill("What is the capital of France? Answer in one sentence.")
        other.locator("#chat-input textarea").fill("Name three colours.")
        page.locator("#chat-send").click()
        other.locator("#chat-send").click()
        seen: list[str] = []
        deadline = time.time() + 240
        while time.time() < deadline:
            text = _bot_text(page)
            if text and (not seen or text != seen[-1]):
                seen.append(text)
            if "tok/s" in text:
                break
            time.sleep(0.05)
        page.screenshot(path=str(ARTIFACTS / "01_chat.png"), full_page=True)
        final = seen[-1] if seen else ""
        assert "tok/s" in final, f"no finished reply; saw {seen[-3:]}"
        assert "tokens" in final
        partial = [s for s in seen[:-1] if s.strip() and "loading" not in s and "tok/s" not in s]
        assert partial, f"the reply did not stream (only saw {seen})"
        assert "Paris" in final
        expect(other.locator("#chatbot")).to_contain_text("tok/s", timeout=240_000)  # the other session's answer
        other_ctx.close()
        _bad_input_keeps_the_chat(page)
        _reload_keeps_chat_and_settings(page)

        # ---- documents: upload, ingest, ask, sources --------------------------------------------------------------
        doc = tmp_path / "zebra_notes.txt"
        doc.write_text(DOC_FACT + "\n\n" + "The weather in the valley was calm all week. " * 5)
        bad = tmp_path / "empty.txt"
        bad.write_text("")
        page.get_by_role("tab", name="Documents").click()
        page.locator("#doc-files input[type=file]").set_input_files([str(doc), str(bad)])
        page.wait_for_timeout(1000)
        page.locator("#doc-ingest").click()
        results = page.locator("#doc-results")
        expect(results).to_contain_text("zebra_notes.txt", timeout=120_000)
        expect(results).to_contain_text("added")
        expect(results).to_contain_text("error")  # the empty file gets its own error, the other file still goes in
        page.locator("#doc-question textarea").fill("What is the launch code for Project Zebra?")
        page.locator("#doc-ask").click()
        sources = page.locator("#doc-sources")
        expect(sources).to_contain_text("zebra_notes.txt", timeout=120_000)
        answer = page.locator("#doc-answer")
        expect(answer).not_to_contain_text("retrieving", timeout=180_000)
        expect(answer).to_contain_text("4417", timeout=180_000)
        page.screenshot(path=str(ARTIFACTS / "02_documents.png"), full_page=True)

        # ---- fine-tune: a tiny run, the loss plot fills in ----------------------------------------------------
        page.get_by_role("tab", name="Fine-tune").click()
        page.get_by_text("Training", exact=True).click()
        expect(page.locator("#ft-max-steps input")).to_be_visible()
        page.wait_for_timeout(500)  # the accordion's controls mount when it first opens; a fill before is lost
        for sel, val in (("#ft-max-steps input", "3"), ("#ft-batch input[type=number]", "2")):
            _fill_until_kept(page, sel, val)
        page.locator("#ft-name input, #ft-name textarea").first.fill("e2e-adapter")
        expect(page.locator("#ft-max-steps input")).to_have_value("3")
        page.wait_for_timeout(500)
        page.locator("#ft-start").click()
        expect(page.locator("#ft-start-msg")).to_contain_text("3 optimizer steps, batch 2", timeout=30_000)
        status = page.locator("#finetune-status")
        expect(status).to_contain_text("e2e-adapter", timeout=30_000)
        # the job belongs to the server, not to the page: after a reload its status is shown again
        page.reload()
        page.get_by_role("tab", name="Fine-tune").click()
        status = page.locator("#finetune-status")
        expect(status).to_contain_text("e2e-adapter", timeout=30_000)
        expect(status).to_contain_text("loss", timeout=240_000)
        plot = page.locator("#finetune-loss-plot")
        # the live plot draws the train loss as a coloured line (vega renders SVG paths) and redraws it as steps come
        train_line = plot.locator("g.mark-line path[stroke][aria-label*='train']").first
        expect(train_line).to_be_visible(timeout=240_000)  # two steps drawn (slow when the CPU is shared)
        first_shape, done_already = train_line.get_attribute("d"), "finished" in status.inner_text()
        expect(status).to_contain_text("finished", timeout=300_000)
        if not done_already:
            expect(train_line).not_to_have_attribute("d", first_shape, timeout=15_000)
        expect(status).to_contain_text("e2e-adapter")
        # both curves: train and validation (the validation series arrives after the first evaluation)
        expect(plot.locator("g.mark-line path[stroke][aria-label*='validation']").first).to_be_attached(
            timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "03_finetune.png"), full_page=True)

        # the adapter is now in Chat's model list
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-model input").click()
        expect(page.get_by_role("option", name="e2e-adapter", exact=False)).to_be_visible(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "04_chat_models.png"), full_page=True)
        browser.close()
