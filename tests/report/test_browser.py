"""The report in a real browser (headless Debian Chromium through Selenium): pages load with
no console error and no network request, figures render, links work both ways, a hostile
therapist id shows as text and runs nothing. Screenshots at 1280 px go to test-artifacts/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from studies import HOSTILE_IDS, Written

from theralens.report.profile_page import profile_filename

CHROMIUM = os.environ.get("THERALENS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("THERALENS_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.browser


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return (f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium chromium-driver, or make "
                "browser-deps)")
    if not Path(CHROMEDRIVER).exists():
        return f"ChromeDriver not found at {CHROMEDRIVER} (Debian: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return ""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    d.get("about:blank")
    d.get_log("performance")
    d.get_log("browser")
    try:
        yield d
    finally:
        d.quit()


def _open(driver, path: Path) -> None:
    driver.get(f"file://{path}")
    assert driver.execute_script("return document.readyState") == "complete"


def _check_clean(driver, page_url: str) -> None:
    """No console error, no resource request, and no request made by the page (the browser's own
    start-up pages, such as chrome://new-tab-page, do not count)."""
    errors = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
    assert not errors, f"console messages: {errors}"
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    requests = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            params = msg["params"]
            url = params["request"]["url"]
            by_page = params.get("documentURL", "").split("#")[0] == page_url.split("#")[0]
            if by_page and url.split("#")[0] != page_url.split("#")[0]:
                requests.append(url)
    assert not requests, f"network requests: {requests}"


def _check_figures(driver) -> int:
    sizes = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg')).map(s => {"
        "const r = s.getBoundingClientRect(); return [r.width, r.height, s.getAttribute('role'),"
        " (s.querySelector('title') || {}).textContent || ''];})")
    assert sizes, "no figures"
    for w, h, role, title in sizes:
        assert w > 0 and h > 0, f"a figure has size {w} x {h}"
        assert role == "img" and title.strip(), "a figure without alt text"
    return len(sizes)


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 120, 16000))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018


def test_report_loads_clean_and_renders(driver, demo: Written) -> None:
    page = demo.out / "report.html"
    driver.get_log("performance")  # drop anything logged before
    _open(driver, page)
    _check_clean(driver, f"file://{page}")
    assert _check_figures(driver) >= 7
    assert "theralens study report" in driver.title
    assert _screenshot(driver, "report.png").stat().st_size > 10_000


def test_profile_loads_clean_and_renders(driver, demo: Written) -> None:
    page = demo.out / "therapists" / profile_filename("T04")
    driver.get_log("performance")
    _open(driver, page)
    _check_clean(driver, f"file://{page}")
    assert _check_figures(driver) >= 5
    assert _screenshot(driver, "profile.png").stat().st_size > 10_000
    small = demo.out / "therapists" / profile_filename("T02")  # 4 patients: too uncertain
    _open(driver, small)
    from selenium.webdriver.common.by import By

    assert "too uncertain to interpret" in driver.find_element(By.ID, "too-uncertain").text.lower()
    _screenshot(driver, "profile-too-uncertain.png")


def test_links_between_report_and_profiles(driver, demo: Written) -> None:
    from selenium.webdriver.common.by import By

    _open(driver, demo.out / "report.html")
    links = driver.find_elements(By.CSS_SELECTOR, "a.profile-link")
    assert len(links) == 42
    target = links[3]
    tid = target.text
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", target)
    target.click()
    assert driver.current_url.endswith(f"therapists/{profile_filename(tid)}")
    assert driver.find_element(By.CSS_SELECTOR, "h1 .therapist-id").text == tid
    driver.find_element(By.ID, "back-to-report").click()
    assert driver.current_url.endswith("report.html#profiles")
    assert driver.find_element(By.ID, "profiles").is_displayed()


def test_stability_and_training_sections_render_and_link(driver, loop: Written) -> None:
    """Issue #14: the sections load clean and render; a profile page links to the stability
    section, and its training lines are shown."""
    from selenium.webdriver.common.by import By

    page = loop.out / "report.html"
    driver.get_log("performance")
    _open(driver, page)
    _check_clean(driver, f"file://{page}")
    for section, verdict in (("stability", "stability-verdict"), ("training", "training-verdict")):
        el = driver.find_element(By.ID, section)
        assert el.is_displayed() and el.size["height"] > 200
        shown = el.find_elements(By.CLASS_NAME, verdict)
        assert len(shown) == 2 and all(v.is_displayed() and v.text.strip() for v in shown)
    assert "stability r =" in driver.find_element(By.ID, "stability-verdicts").text
    assert driver.find_element(By.ID, "table-training").is_displayed()
    driver.find_element(By.CSS_SELECTOR, 'nav.toc a[href="#training"]').click()
    assert driver.current_url.endswith("report.html#training")
    assert _screenshot(driver, "report-loop.png").stat().st_size > 10_000
    trained = next(s["therapist"] for s in json.loads((loop.out / "results.json").read_text())["training"]["schedule"]
                   if s["trained"])
    profile = loop.out / "therapists" / profile_filename(trained)
    driver.get_log("performance")
    _open(driver, profile)
    _check_clean(driver, f"file://{profile}")
    lines = driver.find_elements(By.CLASS_NAME, "training-line")
    assert len(lines) == 2 and all(line.is_displayed() for line in lines)
    assert "(trained)" in lines[0].text
    assert _screenshot(driver, "profile-loop.png").stat().st_size > 10_000
    link = driver.find_element(By.ID, "to-stability")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    assert driver.current_url.endswith("report.html#stability")
    assert driver.find_element(By.ID, "stability").is_displayed()


def test_hostile_therapist_id_shows_as_text_and_runs_nothing(driver, hostile: Written) -> None:
    from selenium.webdriver.common.by import By

    page = hostile.out / "report.html"
    driver.get_log("performance")
    _open(driver, page)
    _no_alert(driver)
    _check_clean(driver, f"file://{page}")
    assert driver.execute_script("return document.querySelectorAll('img, script, iframe, object').length") == 0
    literal = HOSTILE_IDS["T01"]
    links = [a for a in driver.find_elements(By.CSS_SELECTOR, "a.profile-link") if a.text == literal]
    assert len(links) == 1
    link = links[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    assert link.is_displayed()
    assert HOSTILE_IDS["T02"] in [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.profile-link")]
    _screenshot(driver, "report-hostile.png")
    link.click()
    _no_alert(driver)
    assert driver.current_url.endswith(profile_filename(literal))
    assert driver.find_element(By.CSS_SELECTOR, "h1 .therapist-id").text == literal
    assert driver.execute_script("return document.querySelectorAll('img, script').length") == 0
    _check_figures(driver)
    _screenshot(driver, "profile-hostile.png")
    # the script-tag id too
    _open(driver, hostile.out / "therapists" / profile_filename(HOSTILE_IDS["T04"]))
    _no_alert(driver)
    assert driver.find_element(By.CSS_SELECTOR, "h1 .therapist-id").text == HOSTILE_IDS["T04"]


def test_print_layout_renders(driver, demo: Written) -> None:
    """The report prints to PDF (Chromium's print path, the print stylesheet applied)."""
    import base64

    _open(driver, demo.out / "report.html")
    pdf = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})
    data = base64.b64decode(pdf["data"])
    assert data.startswith(b"%PDF") and len(data) > 50_000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.pdf").write_bytes(data)


def test_the_checks_catch_a_leaky_page(driver, tmp_path: Path) -> None:
    """The harness itself: a page that loads an image (from a closed loopback port) and
    has no CSP must fail the network check."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/leak.png" alt=""></body></html>')
    driver.get_log("performance")
    _open(driver, page)
    with pytest.raises(AssertionError):
        _check_clean(driver, f"file://{page}")
