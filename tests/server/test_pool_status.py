"""Pools in a live server's INFO, Prometheus metrics, /status.json and status page:
aggregate counts (never a per-pool or per-tenant label), a bounded top-N of pools with
each tenant's holdings and fair share, and the preemption and revocation counters
moving when an urgent request takes units back from a holder that ignores its give-back."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from tests.server.ccserver import ServerProc, serve  # noqa: F401 (serve is a fixture)
from tests.server.test_metrics import scrape
from tests.server.test_status_page import CHROMIUM, chromium_page

Serve = Callable[..., ServerProc]


def _status(port: int, query: str = "") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json{query}", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _preempted(r: redis.Redis, port: int) -> Callable[[], None]:
    """gpu (4 units, grace 100 ms): "batch" holds all 4 and ignores its give-back; an
    "urgent" request for 2 preempts it. lic (2 units): one holder, one waiter (left
    waiting, in a thread). Returns what ends the wait (a release, then the join)."""
    r.execute_command("POOL.DEFINE", "gpu", 4, "GRACE", 100)
    r.execute_command("POOL.TENANT", "gpu", "batch", "WEIGHT", 1)
    r.execute_command("POOL.TENANT", "gpu", "urgent", "WEIGHT", 3, "BAND", 2)
    r.execute_command("POOL.DEFINE", "lic", 2)
    r.execute_command("POOL.TENANT", "lic", "x")
    a, b, c = (r.execute_command("SESSION.OPEN", 30) for _ in range(3))
    r.execute_command("POOL.ACQUIRE", "gpu", a, "batch", 4)
    lic = r.execute_command("POOL.ACQUIRE", "lic", a, "x", 2)
    got: list[object] = []
    waiter = redis.Redis(port=port)
    th = threading.Thread(target=lambda: got.append(waiter.execute_command("POOL.ACQUIRE", "lic", c, "x", 1,
                                                                          "TIMEOUT", 20_000)), daemon=True)
    th.start()
    urgent = r.execute_command("POOL.ACQUIRE", "gpu", b, "urgent", 2, "TIMEOUT", 10_000)  # after the revocation
    assert isinstance(urgent, int)
    deadline = time.monotonic() + 10
    while r.info("pools")["requests_waiting"] != 1:
        assert time.monotonic() < deadline, r.info("pools")
        time.sleep(0.02)

    def finish() -> None:
        r.execute_command("POOL.RELEASE", "lic", a, lic)
        th.join(10)
        assert not th.is_alive() and isinstance(got[0], int) and got[0] > lic

    return finish


def test_info_metrics_and_status_json_show_pools(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = int(r.info("server")["metrics_port"])
    assert r.info("pools") == {"pools": 0, "capacity_total": 0, "units_held": 0, "requests_waiting": 0,
                               "preemptions": 0, "revocations": 0}
    finish = _preempted(r, srv.port)
    # INFO: every pool together.
    assert r.info("pools") == {"pools": 2, "capacity_total": 6, "units_held": 4, "requests_waiting": 1,
                               "preemptions": 1, "revocations": 1}
    # Metrics: the same figures, aggregate only.
    m = scrape(port)
    assert m[("coordcore_pools", ())] == 2 and m[("coordcore_pool_capacity_units", ())] == 6
    assert m[("coordcore_pool_held_units", ())] == 4 and m[("coordcore_pool_waiting_requests", ())] == 1
    assert m[("coordcore_pool_preemptions_total", ())] == 1 and m[("coordcore_pool_revocations_total", ())] == 1
    assert all(labels == () for name, labels in m if name.startswith("coordcore_pool"))
    # /status.json: the top pools by units held, each tenant's held and fair share.
    status, doc = _status(port)
    assert status == 200
    assert doc["pool_totals"] == {"pools": 2, "capacity": 6, "held": 4, "waiting": 1, "preemptions": 1,
                                  "revocations": 1}
    pools = doc["pools"]
    assert isinstance(pools, list) and [p["pool"] for p in pools] == ["lic", "gpu"]  # held 2 and 2: then waiting
    lic, gpu = pools
    assert gpu == {"pool": "gpu", "capacity": 4, "held": 2, "waiting": 0, "tenant_count": 2, "tenants": [
        {"tenant": "batch", "weight": 1, "min": 0, "max": 1_000_000, "band": 0, "held": 0, "waiting": 0, "share": 0.0},
        {"tenant": "urgent", "weight": 3, "min": 0, "max": 1_000_000, "band": 2, "held": 2, "waiting": 0,
         "share": 2.0}]}
    assert lic["held"] == 2 and lic["waiting"] == 1 and lic["tenants"][0]["waiting"] == 1
    assert lic["tenants"][0]["share"] == 2.0  # demand 3 on 2 units
    status, doc = _status(port, "?pools=1")
    assert status == 200 and [p["pool"] for p in doc["pools"]] == ["lic"]  # held 2 and 1 waiting beats gpu
    assert _status(port, "?pools=0")[1]["pools"] == []
    assert _status(port, "?pools=101")[0] == 400 and _status(port, "?pools=x")[0] == 400
    finish()
    assert r.info("pools")["units_held"] == 3 and r.info("pools")["requests_waiting"] == 0


def test_status_json_lists_a_bounded_top_of_many_pools(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = int(r.info("server")["metrics_port"])
    s = r.execute_command("SESSION.OPEN", 30)
    for i in range(120):
        r.execute_command("POOL.DEFINE", f"p{i:03d}", 200)
        for t in range(20):  # more tenants than a status entry lists
            r.execute_command("POOL.TENANT", f"p{i:03d}", f"t{t:02d}")
        r.execute_command("POOL.ACQUIRE", f"p{i:03d}", s, "t00", i + 1)
    status, doc = _status(port, "?pools=100")
    pools = doc["pools"]
    assert status == 200 and isinstance(pools, list) and len(pools) == 100
    assert [p["held"] for p in pools] == list(range(120, 20, -1))  # the 100 holding most, most first
    assert all(p["tenant_count"] == 20 and len(p["tenants"]) == 16 for p in pools)
    assert r.info("pools")["units_held"] == sum(range(1, 121))


def test_the_status_page_shows_pools(serve: Serve, tmp_path: Path) -> None:
    import pytest

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = int(r.info("server")["metrics_port"])
    with chromium_page(f"http://127.0.0.1:{port}/", tmp_path / "profile") as page:
        page.wait_for("document.getElementById('pools').innerText.includes('no pool is defined')")
        finish = _preempted(r, srv.port)
        row = page.wait_for("[...document.querySelectorAll('#pools tr')].map(tr => tr.innerText)"
                            ".find(t => t.includes('gpu') && t.includes('urgent 2 / 2'))")
        assert "batch 0 / 0" in row, row
        summary = page.wait_for("document.getElementById('poolinfo').innerText")
        assert "1 preemptions, 1 revocations" in summary, summary
        assert page.evaluate("document.getElementById('err').innerText") == ""
        finish()
