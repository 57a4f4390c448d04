"""The status page (``/`` of the metrics port) in a real headless Chromium, driven over
the DevTools protocol: it shows a lock taken by the test, then its release, by itself
(its own polling of /status.json), without the page being reloaded."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    """One tab of a headless Chromium, over the DevTools websocket."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._next = 0

    def evaluate(self, expression: str) -> Any:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": "Runtime.evaluate",
                                  "params": {"expression": expression, "returnByValue": True}}))
        while True:
            msg = json.loads(self._ws.recv(timeout=30))
            if msg.get("id") == self._next:
                return msg["result"]["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        shown = self.evaluate("document.getElementById('locks').innerText")
        raise AssertionError(f"never true in the page: {expression}; the table shows {shown!r}")


@contextlib.contextmanager
def chromium_page(url: str, profile: Path) -> Iterator[Page]:
    from websockets.sync.client import connect

    assert CHROMIUM is not None
    port = _free_port()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        target = None
        while target is None:
            assert proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium's DevTools did not come up"
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    target = next((t for t in json.loads(r.read()) if t.get("type") == "page"), None)
            time.sleep(0.2)
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield Page(ws)
    finally:
        proc.kill()
        proc.wait(10)


def test_the_status_page_shows_a_lock_then_its_release_without_a_reload(serve: Serve, tmp_path: Path) -> None:
    if CHROMIUM is None:
        why = "chromium is not installed (Debian: apt-get install chromium; ./dev test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = int(r.info("server")["metrics_port"])
    with chromium_page(f"http://127.0.0.1:{port}/", tmp_path / "profile") as page:
        page.wait_for("document.getElementById('locks').innerText.includes('no key is held')")
        page.evaluate("window.__sameDocument = 42")  # gone if anything reloads the page
        handle, other = r.execute_command("SESSION.OPEN", 30), r.execute_command("SESSION.OPEN", 30)
        token = r.execute_command("LOCK.ACQUIRE", "page/held-by-the-test", handle)
        session = handle.split(b".")[0].decode()
        row = page.wait_for("[...document.querySelectorAll('#locks tr')].map(tr => tr.innerText)"
                            ".find(t => t.includes('page/held-by-the-test'))")
        assert f"{session}: {token}" in row, row  # the holder and its fencing token
        # A waiter (its connection parks): the row shows how long it has waited, in ms.
        waiter = Raw(srv.port)
        waiter.send(hiredis.pack_command(("LOCK.ACQUIRE", "page/held-by-the-test", other)))
        waited = page.wait_for("[...document.querySelectorAll('#locks tr')]"
                               ".filter(tr => tr.dataset.key === 'page/held-by-the-test')"
                               ".map(tr => Number(tr.lastChild.textContent)).find(ms => ms >= 200)")
        assert waited >= 200
        r.execute_command("LOCK.RELEASE", "page/held-by-the-test", handle)
        assert isinstance(waiter.read(), int)  # granted
        r.execute_command("LOCK.RELEASE", "page/held-by-the-test", other)
        waiter.close()
        # The wait and hold summary: two exclusive waits (one at once, one of >= 200 ms).
        cells = page.wait_for("(() => { const tr = document.querySelector('#timings tr[data-kind=exclusive]');"
                              " const c = tr ? [...tr.children].map(td => td.textContent) : [];"
                              " return c[1] === '2' && c[4] === '2' ? c : null; })()")
        assert cells[0] == "exclusive" and float(cells[2]) >= 100, cells  # mean of 0 and >= 200 ms
        page.wait_for("!document.getElementById('locks').innerText.includes('page/held-by-the-test')")
        assert page.evaluate("window.__sameDocument") == 42
        assert page.evaluate("document.getElementById('err').innerText") == ""
