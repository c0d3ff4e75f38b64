# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report's page in a real headless browser: Debian's chromium and chromium-driver
(make system-deps) driven by selenium. The page is rendered from lab-shaped data, loaded from a
file:// URL, checked as a person would see it, and a screenshot is saved."""

from __future__ import annotations

import json
import pathlib

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from ansible_collections.gpufleet.inference.plugins.module_utils import _report

FIXTURE = pathlib.Path(__file__).parents[1] / "unit" / "fixtures" / "report" / "fleet.json"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_renders_every_host_and_gpu_bar(browser, tmp_path):
    hosts = json.loads(FIXTURE.read_text())["hosts"]
    page = tmp_path / "fleet-report.html"
    page.write_text(_report.html_page(hosts, generated_at="2026-11-22T09:00:00+00:00"))
    browser.get(page.as_uri())
    assert browser.title == "GPU fleet report"

    sections = browser.find_elements(By.CSS_SELECTOR, "section.host")
    assert [s.get_attribute("data-host") for s in sections] == [h["host"] for h in hosts]
    for section in sections:
        assert section.is_displayed()
        heading = section.find_element(By.TAG_NAME, "h2")
        assert heading.is_displayed()
        assert heading.text.startswith(section.get_attribute("data-host"))

    bars = browser.find_elements(By.CSS_SELECTOR, ".vram-bar")
    assert [(b.get_attribute("data-host"), b.get_attribute("data-gpu")) for b in bars] == [
        ("lab-ws", "0"), ("lab-ws", "1")]
    expected = {"0": {"ours": 4300, "others": 559, "free": 19705, "total": 24564},
                "1": {"ours": 3100, "others": 90, "free": 904, "total": 4094}}
    for vram in bars:
        assert vram.is_displayed()
        width = vram.size["width"]
        assert width > 300 and vram.size["height"] >= 20
        want = expected[vram.get_attribute("data-gpu")]
        for kind in ("ours", "others", "free"):
            segment = vram.find_element(By.CSS_SELECTOR, ".seg." + kind)
            assert segment.is_displayed()
            # What the browser drew, in pixels, is the segment's share of the GPU's memory.
            share = segment.size["width"] / (width - 2)  # inside the 1px border
            assert abs(share - want[kind] / want["total"]) < 0.01, (kind, share)
        colours = {vram.find_element(By.CSS_SELECTOR, ".seg." + k).value_of_css_property(
            "background-color") for k in ("ours", "others", "free")}
        assert len(colours) == 3

    over = browser.find_element(By.CSS_SELECTOR, 'tr.over[data-service="ollama_research"]')
    assert over.is_displayed() and "over budget" in over.text
    assert "no GPU" in browser.find_element(By.CSS_SELECTOR, 'section[data-host="lab-cpu"]').text
    gone = browser.find_element(By.CSS_SELECTOR, 'section[data-host="lab-gone"]')
    assert "unreachable" in gone.text

    shot = tmp_path / "fleet-report.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
