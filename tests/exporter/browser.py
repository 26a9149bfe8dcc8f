"""A real headless Chromium for the status page's tests, driven through selenium.

The Debian packages ``chromium`` and ``chromium-driver`` (scripts/bootstrap.sh installs them)
are used as they are: the system chromedriver is given to selenium, so selenium-manager never
looks for (or downloads) a browser or a driver. Screenshots go to ``$SCHEDCTL_SCREENSHOT_DIR``
when it is set (``docs/`` to refresh the README's), else to the test's tmp directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_DIR_ENV = "SCHEDCTL_SCREENSHOT_DIR"
WINDOW = (1400, 900)


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A started headless Chromium (selenium WebDriver), quit on exit."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: apt-get install chromium chromium-driver "
            "(scripts/bootstrap.sh does)"
        )
    # selenium-manager must never run: offline, and with both paths given it has no reason to.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(default: Path) -> Path:
    """Where screenshots go: ``$SCHEDCTL_SCREENSHOT_DIR`` (created) or ``default``."""
    chosen = os.environ.get(SCREENSHOT_DIR_ENV)
    path = Path(chosen) if chosen else default
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    """``condition(driver)`` once truthy (its value), failing the test after ``timeout``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
