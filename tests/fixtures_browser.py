"""Headless Chromium for the browser tests (Debian's chromium and chromedriver, which `make browser` installs)."""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# flags that keep Chromium off this machine's closed network and working as root in a container
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def headless_chrome(profile_dir: Path, window: str = "1280,1800", performance_log: bool = False):
    """A selenium Chrome driver on a fresh profile folder; fails the test (not skips) when Chromium is missing."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium/chromedriver missing: `make browser` installs them (apt packages chromium, chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for the network
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={window}", f"--user-data-dir={profile_dir}"):
        opts.add_argument(flag)
    if performance_log:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver
