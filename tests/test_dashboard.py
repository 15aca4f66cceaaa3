"""The live dashboard: its data, its guards (loopback, token, read-only), and the page in a real
headless chromium (Debian's, through Selenium and Debian's chromedriver), updating without a reload."""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from fedmtl.dashboard.server import DashboardError, DashboardServer
from fedmtl.dashboard.state import RunWatcher
from fedmtl.runs import read_history
from tests import browser
from tests.runfolders import (
    append_round,
    format2_entry,
    synthetic_history,
    write_format2,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("FEDMTL_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))


@pytest.fixture
def server(tmp_path):
    started = []

    def start(run_dir, **kw):
        s = DashboardServer(run_dir, port=0, **kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_payload_reads_both_formats_and_a_half_written_line(tmp_path):
    history = synthetic_history(4)
    old = tmp_path / "old"
    old.mkdir()
    (old / "history.json").write_text(json.dumps(history))
    new = tmp_path / "new"
    write_format2(history, new, upto=3)
    with (new / "history.jsonl").open("a") as f:
        f.write(json.dumps(format2_entry(history["rounds"][4]))[:40])  # the writer is mid-line
    assert [e["round"] for e in read_history(new).rounds] == [0, 1, 2, 3]
    for folder, scope in ((old, "round"), (new, "tracked")):
        payload = RunWatcher(folder).payload()
        rounds = payload["rounds"]
        assert payload["run"]["tasks"] == history["tasks"]
        assert rounds[1]["accuracy"]["beta"] == history["rounds"][1]["metrics"]["beta"]["accuracy"]
        assert rounds[1]["dropped"] == [{"client": "c3", "group": 0, "reason": "no reply within 5s"}]
        aff = rounds[2]["affinity"]
        assert aff["matrix"] == history["rounds"][2]["affinity"]["tracked"]["lookahead"]["matrix"]
        assert aff["coverage_scope"] == scope and [0, 3, "never", 0] in aff["coverage"]
    assert RunWatcher(old).payload()["rounds"][4]["rejected"][0]["reason"] == "body.w: 9 non-finite value(s)"
    assert RunWatcher(new).payload(since=2)["rounds"][0]["round"] == 3
    assert RunWatcher(tmp_path / "not-yet").payload()["run"]["waiting"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "history.jsonl").write_text(json.dumps({"format": 9}) + "\n")
    assert "format 9" in RunWatcher(tmp_path / "bad").payload()["error"]


def test_guards_loopback_token_read_only(tmp_path, server):
    write_format2(synthetic_history(2), tmp_path)
    with pytest.raises(DashboardError, match="token"):
        DashboardServer(tmp_path, host="0.0.0.0", port=0)
    open_one = server(tmp_path)
    assert httpx.get(open_one.url + "api/run").json()["run"]["last_round"] == 2
    assert httpx.post(open_one.url + "api/run").status_code == 405
    assert httpx.get(open_one.url + "api/run", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
    assert httpx.get(open_one.url + "docs").status_code == 404 and httpx.get(open_one.url + "openapi.json").status_code == 404
    page = httpx.get(open_one.url)
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["referrer-policy"] == "no-referrer"
    js = httpx.get(open_one.url + "static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000  # plotly.js from the plotly package, no CDN
    guarded = server(tmp_path, token="s3cret-token")
    base = guarded.url.split("?")[0]
    assert httpx.get(base + "api/run").status_code == 401
    assert httpx.get(base + "api/run", headers={"authorization": "Bearer wrong-token"}).status_code == 401
    assert httpx.get(base + "api/run", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    with httpx.Client() as client:
        first = client.get(guarded.url)  # ?token=... sets an HttpOnly cookie for the page's own requests
        assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
        assert client.get(base + "api/run").status_code == 200


def test_page_renders_the_runs_numbers_and_follows_the_run(tmp_path, server):
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    history = synthetic_history(5)
    write_format2(history, tmp_path, upto=3)
    dash = server(tmp_path, poll_ms=300)
    with browser.chromium() as driver:
        driver.get(dash.url)
        _wait(driver, "return document.body.dataset.lastRound", "3")
        tasks = history["tasks"]
        figure = driver.execute_script("return document.getElementById('accuracy').data.map(t => [t.name, t.x, t.y])")
        assert [f[0] for f in figure] == [*tasks, "mean"]
        for name, xs, ys in figure[:-1]:
            assert xs == [0, 1, 2, 3]
            assert ys == pytest.approx([history["rounds"][r]["metrics"][name]["accuracy"] for r in xs])
        drawn = driver.execute_script("return document.querySelectorAll('#accuracy .scatterlayer .trace').length")
        assert drawn == len(tasks) + 1
        z = driver.execute_script("return document.getElementById('affinity').data[0].z")
        matrix = history["rounds"][3]["affinity"]["tracked"]["lookahead"]["matrix"]
        assert z == [[None if i == j else pytest.approx(v) for j, v in enumerate(row)] for i, row in enumerate(matrix)]
        assert driver.execute_script("return document.querySelectorAll('#affinity .heatmaplayer image').length") == 1
        assert "10 of 12 pairs measured" in driver.find_element("id", "coverage-caption").text
        assert "round 3 of 5" in driver.find_element("id", "progress-text").text
        groups = driver.execute_script("return document.getElementById('groups').data[0].z")
        assert groups[0][2] == groups[3][2] and groups[0][3] != groups[3][3]  # the split after round 2
        assert "c3" in driver.find_element("id", "client-table").text

        driver.execute_script("window.__still_the_same_page = true")
        append_round(tmp_path, history["rounds"][4])  # the run goes on
        _wait(driver, "return document.body.dataset.lastRound", "4")
        assert driver.execute_script("return window.__still_the_same_page") is True  # no reload
        xs = driver.execute_script("return document.getElementById('accuracy').data[0].x")
        assert xs == [0, 1, 2, 3, 4]
        assert "round 4 of 5" in driver.find_element("id", "progress-text").text
        assert "rejected" in driver.find_element("id", "events").text
        time.sleep(0.5)  # let the last transition finish before the picture
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "dashboard.png")
        assert shot.stat().st_size > 20_000
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe  # no script errors, no CSP violations, no failed loads


def _wait(driver, script, expected, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{script!r} stayed {value!r}, expected {expected!r}")
