"""The demo in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via
selenium) on the app served on 127.0.0.1 with random weights and the bundled example clip.

Outside CI the test skips, saying why, when the browser, its driver, selenium or Gradio is missing;
with ``CI=true`` a missing piece is a failure (``.ci/run`` installs them). The screenshot goes to
the test's temp folder; ``SAM2LONG_DEMO_SCREENSHOT=PATH`` also copies it there (how
``docs/demo.png`` is made).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from extras import unavailable

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bedroom.mp4"
CHROMIUM = ("chromium", "chromium-browser")
DRIVER = ("chromedriver", "chromium-driver")
CLICK = (198, 112)  # the girl, in video pixels
WAIT_S = 240


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def _requirements() -> tuple[str, str]:
    """Browser and driver paths, or skip (fail under CI) naming what is missing."""
    browser, driver = _which(CHROMIUM), _which(DRIVER)
    missing = [
        what
        for what, ok in (
            ("the chromium browser (apt-get install chromium)", browser),
            ("chromedriver (apt-get install chromium-driver)", driver),
            ("selenium (pip install -e '.[dev,demo]')", importlib.util.find_spec("selenium")),
            ("gradio (pip install -e '.[demo]')", importlib.util.find_spec("gradio")),
        )
        if not ok
    ]
    if missing:
        unavailable("browser test needs " + ", ".join(missing))
    return browser, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    return _requirements()


@pytest.fixture(scope="module")
def server(browser_paths, make_checkpoint) -> Iterator[str]:
    """The demo app on 127.0.0.1 (closed at the end of the module)."""
    from sam2long.demo.app import build_app, launch
    from sam2long.demo.session import DemoEngine, ModelSettings

    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    engine = DemoEngine(ModelSettings(CFG, str(ckpt), ("++model.image_size=256",), "cpu"))
    demo = build_app(engine, default_video=EXAMPLE, max_frames=3)
    url = launch(demo, engine, host="127.0.0.1", port=_free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url
    finally:
        demo.close()
        engine.close_sessions()


@pytest.fixture()
def driver(browser_paths) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2500"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    chrome.set_page_load_timeout(WAIT_S)
    try:
        yield chrome
    finally:
        chrome.quit()


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; status: {_status(driver)!r}") from None


def _frame_image(driver):
    from selenium.webdriver.common.by import By

    return _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#frame img"), "the frame image")[0]


def test_click_propagate_and_see_results(server: str, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(server)
    image = _frame_image(driver)
    _wait(driver, lambda d: "bedroom.mp4" in _status(d), "the example clip to load")
    before = image.get_attribute("src")

    # a positive click on the first frame: the mask preview replaces the plain frame
    left, top, width, height, natural_w, natural_h = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];",
        image,
    )
    assert (natural_w, natural_h) == (480, 270)
    x, y = CLICK[0] * width / natural_w, CLICK[1] * height / natural_h
    ActionChains(driver).move_to_element_with_offset(image, x - width / 2, y - height / 2).click().perform()
    _wait(driver, lambda d: "1 positive" in _status(d), "the click to register")
    assert "Frame 0" in _status(driver) and "mask " in _status(driver)
    preview = _wait(
        driver, lambda d: (src := _frame_image(d).get_attribute("src")) != before and src, "the mask preview"
    )
    assert preview != before

    # propagate 3 frames with SAM2Long and SAM 2
    driver.find_element(By.CSS_SELECTOR, "#compare input[type=checkbox]").click()
    driver.find_element(By.ID, "propagate").click()
    video = _wait(
        driver,
        lambda d: [
            v for v in d.find_elements(By.CSS_SELECTOR, "#overlay_video video") if v.get_attribute("src")
        ],
        "the overlay video",
    )[0]
    assert video.get_attribute("src").endswith("overlay.mp4")
    side = _wait(
        driver,
        lambda d: [
            v for v in d.find_elements(By.CSS_SELECTOR, "#compare_video video") if v.get_attribute("src")
        ],
        "the side-by-side video",
    )[0]
    assert side.get_attribute("src").endswith("compare.mp4")
    plot = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#pathway_plot img"), "the pathway plot")[
        0
    ]
    assert plot.get_attribute("src").startswith("data:image/png")
    _wait(driver, lambda d: "Last run: SAM2Long (P=3) on frames 0–2" in _status(d), "the run summary")
    downloads = "".join(driver.find_element(By.ID, "downloads").text.split())  # names wrap at the dot
    for name in ("overlay.mp4", "masks.zip"):
        assert name in downloads

    time.sleep(0.5)  # let the plot and videos finish painting
    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "demo.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if target := os.environ.get("SAM2LONG_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # a second tab has its own session: none of the first tab's clicks or results
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(server)
    _frame_image(driver)
    _wait(driver, lambda d: "none yet" in _status(d), "the second tab's own session")
    assert not [
        v for v in driver.find_elements(By.CSS_SELECTOR, "#overlay_video video") if v.get_attribute("src")
    ]
    driver.switch_to.window(first)
    assert "1 positive" in _status(driver)
