"""``mseg serve`` end to end, slow: the page in a real browser, and a server killed mid-load then restarted.

The browser is Debian's Chromium (``/usr/bin/chromium``, or ``MSEG_CHROMIUM``) driven by Playwright's Python
package; ``playwright install`` downloads a browser of its own, which this test does not need. The test segments
the bundled example through the page's example button, then uploads it through the file input, waits for the
overlay, reads the legend, hovers a pixel and writes a screenshot (``MSEG_SCREENSHOT=PATH`` keeps it, e.g.
``docs/images/serve-page.png``).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
from pathlib import Path

import pytest

from mseg_semantic.examples import example_path
from mseg_semantic.serve.process import child_env, start_server

httpx = pytest.importorskip("httpx", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

pytestmark = [pytest.mark.slow, pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser():
    """A headless Debian Chromium under Playwright, or a skip that says what is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="needs Playwright's Python package: pip install "
        "playwright (no 'playwright install': the test uses Debian's chromium)",
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium, or set MSEG_CHROMIUM)")
    return sync_api


def test_the_page_segments_the_bundled_example_in_a_browser(tmp_path):
    sync_api = browser()
    server = start_server(["--port", "0"], env=child_env(ROOT), timeout=120)
    shot = Path(os.environ.get("MSEG_SCREENSHOT") or tmp_path / "serve-page.png")
    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = chromium.new_page(viewport={"width": 1400, "height": 820})
            page.goto(server.url + "/")
            page.wait_for_selector("#examples button[data-example=dashcam]")
            assert page.locator("#taxonomy option").all_inner_texts() == ["camvid-11"]
            page.click("#examples button[data-example=dashcam]")  # the bundled example, fetched from the server
            page.wait_for_function("document.getElementById('status').textContent.startsWith('dashcam.png: 1164')")
            assert page.locator("#legend li").count() >= 5
            page.set_input_files("#file", str(example_path()))  # the same photo, picked as a file
            page.wait_for_function("document.getElementById('status').textContent.startsWith('dashcam_comma2k19')")
            page.wait_for_selector("#overlay[data-ready=true]", timeout=60_000)
            legend = page.locator("#legend li").all_inner_texts()
            assert legend[0].split("\n")[0].strip() == "Road" and len(legend) >= 5
            assert all(line.strip().endswith("%") for line in legend)
            box = page.locator("#overlay").bounding_box()
            page.locator("#overlay").hover(position={"x": box["width"] * 0.5, "y": box["height"] * 0.92})  # the road
            page.wait_for_function("document.getElementById('hover').textContent.includes('confidence ')")
            hover = page.locator("#hover").inner_text()
            assert "Road, confidence" in hover and hover.endswith("%")
            downloads = page.locator("#downloads a").all_inner_texts()
            assert "dashcam_comma2k19_overlay.jpg" in downloads and "dashcam_comma2k19_labels.png" in downloads
            assert "dashcam_comma2k19.png: 1164×874" in page.locator("#status").inner_text()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # The API's documentation renders from the package's own files (the browser reaches nothing else).
            page.goto(server.url + "/docs")
            page.wait_for_selector(".opblock-summary-path[data-path=\"/v1/segment\"]", timeout=30_000)
            chromium.close()
    finally:
        server.stop()
    assert shot.stat().st_size > 10_000


def test_the_page_switches_a_universal_model_to_a_test_taxonomy(tmp_path):
    """A 194-class model (tiny, random) offers the test taxonomies; choosing one segments the image again in it."""
    from conftest import tiny_hrnet

    from mseg_semantic.models import save_checkpoint
    from mseg_semantic.taxonomy import class_names

    sync_api = browser()
    checkpoint = save_checkpoint(tiny_hrnet(194), tmp_path / "universal.safetensors", taxonomy="universal")
    args = ["--port", "0", "--model", str(checkpoint), "--preset", "360_ss", "--base-size", "96", "--crop-size", "97"]
    server = start_server(args, env=child_env(ROOT), timeout=120)
    try:
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = chromium.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#examples button[data-example=dashcam]")
            assert page.locator("#taxonomy option").all_inner_texts()[:3] == ["universal", "camvid-11", "kitti-19"]
            page.click("#examples button[data-example=dashcam]")
            page.wait_for_function("document.getElementById('status').textContent.includes(' of universal ')")
            page.select_option("#taxonomy", "camvid-11")  # the same image again, in camvid-11's classes
            page.wait_for_function("document.getElementById('status').textContent.includes(' of camvid-11 ')")
            legend = [line.split("\n")[0].strip() for line in page.locator("#legend li").all_inner_texts()]
            assert legend and set(legend) <= set(class_names("camvid-11"))
            chromium.close()
    finally:
        server.stop()


def test_a_server_killed_under_load_restarts_on_the_same_port_with_nothing_to_clean(tmp_path):
    env = child_env(ROOT, OMP_NUM_THREADS="1")
    first = start_server(["--port", "0", "--threads", "1"], env=env)
    port = first.url.rsplit(":", 1)[1]
    body = example_path().read_bytes()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(_post_quietly, first.url, body) for _ in range(8)]
        time.sleep(1.0)
        first.kill()  # SIGKILL mid-load: no shutdown code runs
        outcomes = [f.result() for f in load]
    assert "error" in outcomes  # the kill did cut requests off
    second = start_server(["--port", port, "--threads", "1"], env=env, timeout=120)
    try:
        assert second.url == first.url
        assert httpx.get(second.url + "/readyz").json()["ready"] is True
        assert httpx.post(second.url + "/v1/segment?outputs=", content=body, timeout=60).status_code == 200
    finally:
        second.stop()


def _post_quietly(url: str, body: bytes) -> str:
    try:
        return str(httpx.post(url + "/v1/segment?outputs=", content=body, timeout=60).status_code)
    except httpx.HTTPError:
        return "error"
