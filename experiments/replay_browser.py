"""Headless Chromium through selenium for looking at a report as a person would (tests, bench_replay.py).

The binaries and flags come from envs/browser.py (the wrapper script carries this machine's flags), and
selenium-manager is kept offline (SE_OFFLINE): it must never try the network.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def chrome(width: int = 1400, height: int = 1000) -> Iterator["object"]:
    """A headless Chromium webdriver that keeps its console log (driver.get_log("browser")); always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from envs.browser import chrome_paths, chrome_wrapper

    os.environ["SE_OFFLINE"] = "true"
    binary, driver_path = chrome_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome_wrapper(binary)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def file_url(path: Path, fragment: str = "") -> str:
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def wait_ready(driver, timeout: float = 20.0) -> None:
    """Wait until the page's script has rendered (it sets body[data-ready])."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body && document.body.getAttribute('data-ready') === '1'"))


def console_errors(driver) -> list[dict]:
    """SEVERE console entries: JavaScript errors, failed loads (a missing image or script)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
