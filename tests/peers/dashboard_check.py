"""Drives the dashboard in headless Chromium (Debian's chromium and chromium-driver, with
selenium from PyPI), as a user would: load /dashboard, see the nodes, drain one with the
page's button (accepting its confirmation), and see it change without a reload.

    dashboard_check.py ADMIN_URL NODE [SCREENSHOT.png [NEW_NODE_ADDR]]

Prints "node POOL/NODE STATE HEALTH VERSION" per node, then "changed STATE SECONDS"; with
NEW_NODE_ADDR, adds node "c" at that address through the API and prints "added POOL/c
SECONDS" once its row shows (no reload).
"""
import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

admin, target = sys.argv[1], sys.argv[2]
shot = sys.argv[3] if len(sys.argv) > 3 else None
new_addr = sys.argv[4] if len(sys.argv) > 4 else None

opts = Options()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
    opts.add_argument(arg)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService("/usr/bin/chromedriver"))
try:
    driver.get(admin + "/dashboard")
    wait = WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-node]")) >= 2)
    wait.until(lambda d: all(
        r.find_element(By.CSS_SELECTOR, '[data-field="version"]').text not in ("", "–")
        for r in d.find_elements(By.CSS_SELECTOR, "tr[data-node]")))
    rows = driver.execute_script(
        "return [...document.querySelectorAll('tr[data-node]')].map(r => [r.dataset.node,"
        " ...['state', 'health', 'version'].map(f => r.querySelector(`[data-field=\"${f}\"]`).textContent)])")
    for node, state_, health, version in rows:
        print("node", node, state_, health, version, flush=True)
    # Marks this page load: a reload would lose it.
    driver.execute_script("window.__loaded_once = true")
    wait.until(lambda d: "live" in d.find_element(By.ID, "live").text)
    driver.find_element(By.CSS_SELECTOR, 'button[data-action="drain"][data-target="%s"]' % target).click()
    wait.until(EC.alert_is_present()).accept()
    started = time.monotonic()
    # Read in the page, in one step: the table is re-rendered as events come, so an element
    # found a moment ago may be gone.
    state = lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
        'tr[data-node="%s"] [data-field="state"]' % target)
    WebDriverWait(driver, 5, poll_frequency=0.02).until(lambda d: state(d) in ("draining", "drained"))
    took = time.monotonic() - started
    assert driver.execute_script("return window.__loaded_once === true"), "the page was reloaded"
    print("changed", state(driver), "%.3f" % took, flush=True)
    if new_addr:
        pool = target.split("/")[0]
        req = urllib.request.Request(
            "%s/v1/pools/%s/nodes" % (admin, pool),
            data=json.dumps({"name": "c", "addr": new_addr}).encode(),
            headers={"content-type": "application/json"}, method="POST")
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201, r.status
        row = 'tr[data-node="%s/c"]' % pool
        WebDriverWait(driver, 5, poll_frequency=0.02).until(
            lambda d: d.execute_script("return document.querySelector(arguments[0]) !== null", row))
        assert driver.execute_script("return window.__loaded_once === true"), "the page was reloaded"
        print("added %s/c %.3f" % (pool, time.monotonic() - started), flush=True)
    if shot:
        driver.save_screenshot(shot)
finally:
    driver.quit()
