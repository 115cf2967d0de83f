"""The report page in a real headless Chromium (Chrome DevTools Protocol over a pipe, no extra package): no console
error, no request beyond the file itself, every figure drawn with its data points, a screenshot saved."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_report import FIGURES, real_study_store
from slimlab.report import write_report

# Debian's /usr/bin/chromium is a shell wrapper; the binary behind it takes the pipe's descriptors as they are.
CANDIDATES = [os.environ.get("SLIMLAB_CHROMIUM", ""), "/usr/lib/chromium/chromium", shutil.which("chromium") or "",
              shutil.which("chromium-browser") or "", shutil.which("google-chrome") or ""]
CHROMIUM = next((c for c in CANDIDATES if c and os.access(c, os.X_OK)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--enable-unsafe-swiftshader",  # software WebGL for parallel coordinates
         "--remote-debugging-pipe"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")


class DevTools:
    """A browser driven over --remote-debugging-pipe: commands on fd 3, replies and events on fd 4, NUL-separated."""

    def __init__(self, profile: Path):
        command_read, self._command_write = os.pipe()
        self._event_read, event_write = os.pipe()

        def as_fd_3_and_4():
            a, b = os.dup(command_read), os.dup(event_write)  # neither is 3 or 4 then, so dup2 cannot clobber one
            os.dup2(a, 3), os.dup2(b, 4)

        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"], preexec_fn=as_fd_3_and_4,
                                        close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(command_read), os.close(event_write)
        self._buffer, self._id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._command_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(method)

    def read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._event_read, 1 << 16)
            if not chunk:
                raise EOFError("the browser closed its pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.read())

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            self.process.kill()
        self.process.wait(10)
        os.close(self._command_write), os.close(self._event_read)


DRAWN = """JSON.stringify(Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({id: d.id,
  points: (d.data || []).reduce((n, t) => n + ((t.x && t.x.length) || (t.dimensions && t.dimensions[0].values.length) || 0), 0),
  marks: d.querySelectorAll('.scatterlayer .point, .scatterlayer .js-line, .bars .point, .parcoords .y-axis').length})))"""


def open_in_browser(page: Path, out: Path) -> dict:
    """Load `page` in Chromium: the browser's events, what each figure drew, a full-page screenshot."""
    try:
        browser = DevTools(out / "profile")
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    except (OSError, EOFError, RuntimeError, TimeoutError) as exc:
        pytest.skip(f"Chromium ({CHROMIUM}) could not start: {exc}")
    try:
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=1300, height=900, deviceScaleFactor=1, mobile=False)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        drawn = json.loads(browser.send("Runtime.evaluate", session, expression=DRAWN, returnByValue=True)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        (out / "screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    return {"page": page, "events": browser.events, "drawn": {d["id"]: d for d in drawn}, "screenshot": out / "screenshot.png"}


def problems(events: list[dict]) -> list[dict]:
    """Console errors, exceptions and error log entries."""
    return [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    """The real study's report loaded in Chromium: the browser's events and what each figure drew."""
    out = tmp_path_factory.mktemp("browser")
    return open_in_browser(write_report(real_study_store(), None, out / "report"), out)


def test_page_loads_with_no_console_error_and_no_request_beyond_itself(opened):
    assert problems(opened["events"]) == []
    requests = [e["params"]["request"]["url"] for e in opened["events"] if e.get("method") == "Network.requestWillBeSent"]
    assert requests == [opened["page"].as_uri()]


def test_every_figure_is_drawn_with_its_data_points(opened):
    assert sorted(opened["drawn"]) == sorted(FIGURES)
    for key, figure in opened["drawn"].items():
        assert figure["points"] > 0 and figure["marks"] > 0, key
    assert opened["drawn"]["parallel_coordinates"]["points"] == 12  # one line per run
    assert opened["drawn"]["layer_sparsity"]["marks"] == opened["drawn"]["layer_sparsity"]["points"]  # a bar per layer


def test_screenshot_is_saved(opened):
    data = opened["screenshot"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


def test_the_explore_page_draws_its_front_with_no_error_and_no_request(tmp_path):
    from test_explore import _config, _trained_weights
    from slimlab.explore import explore
    from slimlab.store import Store

    cfg = _config(_trained_weights(tmp_path / "tiny.pt"))
    result = explore(cfg, Store(tmp_path / "store"), tmp_path / "out", "inline", say=lambda _: None)
    opened = open_in_browser(tmp_path / "out" / "report.html", tmp_path)
    assert problems(opened["events"]) == []
    requests = [e["params"]["request"]["url"] for e in opened["events"] if e.get("method") == "Network.requestWillBeSent"]
    assert requests == [opened["page"].as_uri()]
    front = opened["drawn"]["front"]
    assert front["points"] == len(result.final()) + len(result.scores["rung0"]) - len(result.scores.get("rung1", [])) + 2  # float, the pick
    assert front["marks"] > 0
