"""The page at / in Chromium against a real server: upload, library, generate with live progress and audio,
result, download, cancel, search, the keyboard alone, and a phone's width."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server

TIMEOUT_MS = 120_000  # tiny models on a loaded 2-core box


@pytest.fixture
def page(browser: Any, server: Server) -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def upload_through_page(page: Any, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('upload-status').textContent.startsWith('Uploaded')")


def set_duration_and_generate(page: Any, seconds: int) -> None:
    page.fill("#duration", str(seconds))
    page.click("#generate-button")
    page.wait_for_selector("#cancel-button", state="visible")


def test_upload_generate_listen_download_cancel_search(page: Any, song_file: Path, tmp_path: Path) -> None:
    upload_through_page(page, song_file)
    track = page.locator("#library li.track", has_text="little-band.wav").first
    track.wait_for()
    assert track.locator(".duration").inner_text() == "8.0 s"
    assert "BPM" in track.locator(".tempo").inner_text() or track.locator(".tempo").inner_text() == "–"
    assert track.locator(".key").inner_text() not in ("", "–")
    assert "LUFS" in track.locator(".loudness").inner_text()
    track.locator("canvas[data-drawn=true]").wait_for()  # the waveform came from /peaks
    assert page.input_value("#source") == track.get_attribute("data-audio-id")

    page.check("input[name=preset][value=creative]")  # the preset fills temperature and guidance
    assert (page.input_value("#temperature"), page.input_value("#cfg_coef")) == ("1.2", "2")
    page.check("input[name=preset][value=similar]")
    page.fill("#seed", "11")
    set_duration_and_generate(page, 20)
    # progress moves and the live player plays, both before the job completes
    moving = page.wait_for_function("""() => {
        const bar = document.getElementById('job-progress'), live = document.getElementById('live-audio');
        return bar.value > 0 && bar.value < 100 && live.currentTime > 0.3 && !live.paused
            && document.getElementById('job-status').textContent.startsWith('Generating')
            && {progress: bar.value, played: live.currentTime};
    }""", polling=50).json_value()  # fmt: skip
    assert 0 < moving["progress"] < 100 and moving["played"] > 0.3

    page.wait_for_selector("#final", state="visible")
    assert page.inner_text("#job-status") == "Done."
    page.wait_for_function("document.getElementById('result-audio').duration > 19.9", polling=100)
    page.locator("#result-wave[data-drawn=true]").wait_for()
    assert page.inner_text("#result-similarity") not in ("", "–")
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "result.wav"
    download_info.value.save_as(saved)
    assert saved.read_bytes()[:4] == b"RIFF" and saved.stat().st_size > 20 * 32_000 * 2

    set_duration_and_generate(page, 120)  # a second job, cancelled while it runs
    page.wait_for_function("document.getElementById('job-status').textContent.startsWith('Generating')")
    page.click("#cancel-button")
    page.wait_for_function("document.getElementById('job-status').textContent === 'Cancelled.'")
    assert page.is_hidden("#cancel-button")

    page.fill("#search-text", "calm piano")
    page.press("#search-text", "Enter")
    result = page.locator("#results li", has_text="little-band.wav").first
    result.wait_for()
    result.get_by_role("button", name="Play little-band.wav").click()
    page.wait_for_function("(() => { const a = document.querySelector('#results audio'); "
                           "return a && a.currentTime > 0.2; })()", polling=100)  # fmt: skip


def test_the_keyboard_alone_uploads_generates_and_cancels(page: Any, song_file: Path) -> None:
    reached: list[str] = []
    page.bring_to_front()  # key presses open the file chooser only in the focused page
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id || document.activeElement.tagName")
        reached.append(focused)
        if focused == "file":
            with page.expect_file_chooser() as chooser:
                page.keyboard.press("Space")
            chooser.value.set_files(str(song_file))
            page.wait_for_function("document.getElementById('upload-status').textContent.startsWith('Uploaded')")
        if focused == "duration":  # the longest job, typed: it must still run when Cancel is pressed
            page.keyboard.press("Control+A")
            page.keyboard.type("120")
        if focused == "generate-button" and "file" in reached:
            page.keyboard.press("Enter")
            page.wait_for_selector("#cancel-button", state="visible")
            page.keyboard.press("Tab")  # the next stop is Cancel
            assert page.evaluate("document.activeElement.id") == "cancel-button"
            page.keyboard.press("Enter")
            ended = "['Cancelled.', 'Done.'].includes(document.getElementById('job-status').textContent)"
            page.wait_for_function(ended)
            break
    else:
        pytest.fail(f"Tab never reached the upload and then the Generate button: {reached}")
    for stop in ("file", "source", "mode", "prompt", "duration", "temperature", "seed", "format"):
        assert stop in reached, f"{stop} is not reachable with Tab: {reached}"


def test_every_control_has_a_name_for_screen_readers(page: Any) -> None:
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, audio, canvas, a')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                      && !el.textContent.trim() && el.type !== 'radio' && !el.closest('template'))
        .map(el => el.outerHTML.slice(0, 80))""")  # fmt: skip
    assert unnamed == []
    assert page.locator("main section h2").count() >= 5


def test_fits_a_phone(browser: Any, server: Server, song_file: Path, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url + "/")
    upload_through_page(page, song_file)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    box = page.locator("#generate-button").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    shot = tmp_path / "phone.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    context.close()


def test_asks_for_an_api_key_keeps_it_and_players_use_signed_urls(
    browser: Any, keyed_server: tuple[Server, str], song_file: Path
) -> None:
    """A server with REQUIRE_API_KEY=true: the page asks for the key, keeps it, sends it on every request,
    and its <audio> elements (which cannot send headers) play through signed URLs."""
    server, secret = keyed_server
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    answered: list[tuple[str, str | None, int]] = []  # (url, Authorization sent, status) of every /api call
    page.on("response", lambda r: "/api/" in r.url and answered.append(
        (r.url, r.request.headers.get("authorization"), r.status)))
    page.goto(server.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    assert "API key is required" in page.inner_text("#key-reason")
    page.fill("#key-input", secret)
    page.click("#key-dialog button[value=save]")
    page.wait_for_selector("#key-dialog[open]", state="detached")
    assert page.evaluate("localStorage.getItem('motif.apiKey')") == secret
    upload_through_page(page, song_file)
    track = page.locator("#library li.track").first
    track.locator("canvas[data-drawn=true]").wait_for()
    src = track.locator("audio").get_attribute("src")
    assert src is not None and "/file?token=" in src
    page.evaluate("document.querySelector('#library li.track audio').play()")  # no header: only the token
    page.wait_for_function("document.querySelector('#library li.track audio').currentTime > 0.2", polling=100)
    forged = src[:-1] + ("0" if src[-1] != "0" else "1")
    assert page.request.get(server.url + forged).status == 401  # a tampered token is refused
    set_duration_and_generate(page, 5)  # pushed progress (fetch with the key), live audio and download (tokens)
    page.wait_for_selector("#final", state="visible")
    assert page.inner_text("#job-status") == "Done."
    assert "/stream?token=" in (page.get_attribute("#live-audio", "src") or "")
    with page.expect_download() as download_info:
        page.click("#download")
    assert download_info.value.failure() is None
    page.reload()
    page.locator("#library li.track").first.wait_for()
    assert page.query_selector("#key-dialog[open]") is None  # the kept key was used: no question this time
    served = [(url, auth) for url, auth, status in answered if status != 401 and "token=" not in url]
    assert served and all(auth == f"Bearer {secret}" for _, auth in served), served
    assert all(status != 401 for url, _, status in answered if "token=" in url)  # signed URLs were accepted
    context.close()
