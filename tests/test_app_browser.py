"""foley app in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

One ``foley app`` server runs for the module, as a user starts it (``python -m foley.cli app``
in a subprocess), on the tiny real pipeline saved as a model folder. The tests upload files
through the page's own file input, press Generate, wait for what the page shows, and fetch the
files it serves. .ci/run installs the browser; in CI a missing browser fails these tests
instead of skipping them.

Set ``FOLEY_APP_SCREENSHOT=PATH`` to keep the finished page's screenshot (docs/images/app.png
is made that way, then shrunk).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver  # pinned in requirements/lock.txt; a missing one fails, not skips
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from helpers.tiny_pipeline import tiny_real_pipeline

from foley.io.media import decode_audio_track, read_audio, write_video
from foley.io.video import probe_video
from foley.synth.world import render_clip

SR = 44100
# AAC codes whole 1024-sample frames: the encoder pads the last one and the decoder may keep
# the encoder's priming frame, so the decoded track is up to two frames longer, never shorter.
AAC_SLACK = 2 * 1024
START_TIMEOUT = 300  # s; importing torch and gradio on two busy shared cores takes a while
WAIT = 120  # s for anything the page does (one generation of the tiny model takes seconds)



def _browser() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver; fails in CI and skips elsewhere when missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = "headless Chromium is missing: apt-get install -y chromium chromium-driver (.ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _clip(path: Path, index: int, seconds: float) -> Path:
    rendered = render_clip(index, 11, seconds=seconds, fps=25.0, size=64, category="bouncing_ball")
    write_video(path, rendered.frames, 25.0)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    """A running ``foley app`` on the tiny model: its URL and its temporary-folder parent."""
    root = tmp_path_factory.mktemp("app")
    model = root / "model"
    pipeline = tiny_real_pipeline(window_seconds=1.0, overlap_seconds=0.25)
    pipeline.set_generation_params(steps=2, cfg=2.0)
    pipeline.save_pretrained(model)
    temp = root / "server_tmp"
    temp.mkdir()
    port = _free_port()
    log = root / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "foley.cli", "app", "--model", str(model), "--port", str(port),
               "--temp-dir", str(temp), "--max-seconds", "10", "--examples", "false"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"foley app exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"foley app did not answer within {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "temp": temp, "log": log, "root": root}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # SIGTERM stops the server and deletes its temporary folder, uploads and outputs included.
    assert process.returncode == 0, log.read_text()
    assert list(temp.iterdir()) == [], log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--mute-audio"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def _open(browser: webdriver.Chrome, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, WAIT).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#foley-generate")))


def _upload(browser: webdriver.Chrome, path: Path) -> None:
    """Choose ``path`` in the video input (clearing what it held) and wait until the page shows it."""
    clear = browser.find_elements(By.CSS_SELECTOR, "#foley-input button[aria-label='Clear']")
    if clear:
        clear[0].click()
    field = WebDriverWait(browser, WAIT).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#foley-input input[type=file]")))
    field.send_keys(str(path.resolve()))
    WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#foley-input video")))


def _generate(browser: webdriver.Chrome, words: str, progress: str | None = None) -> str:
    """Press Generate and return the status once it contains ``words`` (after showing ``progress``)."""
    browser.find_element(By.CSS_SELECTOR, "#foley-generate").click()
    if progress:  # the progress text of the model call, the longest step, over the output video
        WebDriverWait(browser, WAIT, poll_frequency=0.05).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#foley-output [data-testid=status-tracker]"), progress))
    WebDriverWait(browser, WAIT).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#foley-status"), words))
    return browser.find_element(By.CSS_SELECTOR, "#foley-status").text


def _fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as response:
        path.write_bytes(response.read())
    return path


def _served_output(browser: webdriver.Chrome, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The mp4 the page plays, and the download links by suffix."""
    video = WebDriverWait(browser, WAIT).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#foley-output video")))
    mp4 = _fetch(video.get_attribute("src"), tmp_path / "played.mp4")
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#foley-downloads a")]
    links = {Path(urllib.parse.urlparse(href).path).suffix: href for href in hrefs if href}
    return mp4, links


def _check_stereo_track(mp4: Path, seconds: float) -> None:
    """A stereo 44.1 kHz track as long as ``seconds`` (AAC framing aside) next to a video as long."""
    wave, rate = decode_audio_track(mp4)
    assert rate == SR and wave.shape[0] == 2
    assert 0 <= wave.shape[1] - round(seconds * SR) <= AAC_SLACK
    assert probe_video(mp4).duration == pytest.approx(seconds, abs=1e-6)


def test_upload_generate_and_play(server: dict, browser: webdriver.Chrome, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "bouncing ball.mp4", 0, 2.0)
    seconds = probe_video(clip).duration
    _open(browser, server["url"])
    _upload(browser, clip)
    status = _generate(browser, "Generated", progress=f"generating {seconds:.2f} s of stereo audio")
    assert f"{seconds:.2f} s of 44.1 kHz stereo for bouncing ball.mp4" in status
    mp4, links = _served_output(browser, tmp_path)
    _check_stereo_track(mp4, seconds)
    assert sorted(links) == [".mp4", ".wav"]
    wave, rate = read_audio(_fetch(links[".wav"], tmp_path / "download.wav"))
    assert rate == SR and wave.shape == (2, round(seconds * SR))
    assert _fetch(links[".mp4"], tmp_path / "download.mp4").read_bytes() == mp4.read_bytes()
    picture = browser.find_element(By.CSS_SELECTOR, "#foley-picture img")
    assert picture.get_attribute("naturalWidth") == "800"  # the 10 x 6.4 inch figure at 80 dpi
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 140, 2400))
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FOLEY_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FOLEY_APP_SCREENSHOT"])
    browser.set_window_size(1280, 1000)


def test_a_text_file_gets_a_message_and_the_server_goes_on(server: dict, browser: webdriver.Chrome, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("meeting notes, not a video\n")
    _open(browser, server["url"])
    _upload(browser, fake)
    status = _generate(browser, "Not generated")
    assert "notes.mp4 is not a video: FFmpeg does not recognise it as a media file" in status
    assert browser.find_elements(By.CSS_SELECTOR, "#foley-output video") == []
    # The refused upload was deleted from the server at once.
    assert not list(server["temp"].rglob("notes.mp4"))
    clip = _clip(tmp_path / "second.mp4", 1, 1.5)
    _upload(browser, clip)
    seconds = probe_video(clip).duration  # 37 frames at 25 fps: 1.48 s
    status = _generate(browser, "Generated")
    assert f"{seconds:.2f} s of 44.1 kHz stereo for second.mp4" in status
    mp4, _ = _served_output(browser, tmp_path)
    _check_stereo_track(mp4, seconds)
