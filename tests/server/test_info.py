"""INFO [section] in Redis's format, /status.json against LOCK.INFO, `coordcore status`
and `coordcore top`, and the log lines of sessions and recovery, on a real server."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import redis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]


def test_info_sections_and_section_argument(serve: Serve) -> None:
    srv = serve()
    r = redis.Redis(port=srv.port)
    raw = Raw(srv.port)
    text = raw.command("INFO").decode()
    headers = [line for line in text.split("\r\n") if line.startswith("# ")]
    assert headers == ["# Server", "# Clients", "# Sessions", "# Locks", "# Pools", "# Log", "# IDs", "# Stats"]
    handle = r.execute_command("SESSION.OPEN", 10)
    r.execute_command("LOCK.ACQUIRE", "info/a", handle)
    locks = raw.command("INFO", "locks").decode()
    assert locks.startswith("# Locks\r\n") and "# Server" not in locks
    assert "keys_held:1\r\n" in locks
    assert r.info("sessions")["sessions"] == 1  # redis-py parses our format
    assert r.info("log")["durability"] == "fsync" and r.info("log")["fsyncs"] >= 1
    assert r.info("ids")["ids_issued"] >= 0
    assert raw.command("INFO", "nosuchsection") == b""
    assert "# Stats" in raw.command("INFO", "ALL").decode()
    raw.close()


def test_status_json_matches_lock_info(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port, protocol=3)
    port = int(r.info("server")["metrics_port"])
    a, b = r.execute_command("SESSION.OPEN", 10), r.execute_command("SESSION.OPEN", 10)
    for i in range(30):
        r.execute_command("LOCK.ACQUIRE", f"json/{i:02d}", a)
    seen: dict[str, dict[str, object]] = {}
    after = 0
    pages = 0
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json?count=7&after={after}") as reply:
            doc = json.loads(reply.read())
        pages += 1
        assert len(doc["locks"]) <= 7
        for entry in doc["locks"]:
            seen[entry["key"]] = entry
        if doc["next"] is None:
            break
        after = doc["next"]
    assert pages >= 5 and len(seen) == 30
    assert doc["keys"] == 30 and doc["sessions"] == 2 and doc["revision"] == r.execute_command("LOCKS.REVISION")
    for key in ("json/00", "json/17"):
        info = r.execute_command("LOCK.INFO", key)
        got = seen[key]
        assert got["kind"] == info[b"kind"].decode() and got["mode"] == info[b"mode"].decode()
        assert got["holder_count"] == info[b"holder_count"] and got["waiter_count"] == info[b"waiter_count"]
        assert [h["token"] for h in got["holders"]] == [h[b"token"] for h in info[b"holders"]]
        assert [h["session"] for h in got["holders"]] == [h[b"session"] for h in info[b"holders"]]


def test_status_and_top_commands(serve: Serve) -> None:
    srv = serve()
    r = redis.Redis(port=srv.port)
    a, b = r.execute_command("SESSION.OPEN", 10), r.execute_command("SESSION.OPEN", 10)
    r.execute_command("LOCK.ACQUIRE", "top/busy", a)
    r.execute_command("LOCK.ACQUIRE", "top/calm", a)
    # A waiter parks its connection: send it raw and leave it waiting.
    waiter = Raw(srv.port)
    waiter.send(b"*3\r\n$12\r\nLOCK.ACQUIRE\r\n$8\r\ntop/busy\r\n$%d\r\n%s\r\n" % (len(b), b))
    deadline = time.monotonic() + 5
    while r.info("locks")["waiters"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    base = [sys.executable, "-m", "coordcore.cli"]
    out = subprocess.run([*base, "status", "--port", str(srv.port)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = {" ".join(line.split()[:-1]): line.split()[-1] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert rows["keys held"] == "2" and rows["waiters"] == "1" and rows["sessions"] == "2"
    out = subprocess.run([*base, "top", "--port", str(srv.port), "--iterations", "1"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    busiest = out.stdout.split("Busiest keys")[1].split("Longest waits")
    assert busiest[0].index("top/busy") < busiest[0].index("top/calm")  # 1 holder + 1 waiter first
    assert "top/busy" in busiest[1] and "top/calm" not in busiest[1]
    bad = subprocess.run([*base, "status", "--port", "1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "cannot reach" in bad.stderr and "Traceback" not in bad.stderr
    top = r.execute_command("LOCKS.TOP", "COUNT", 1, "SCAN", 1)
    assert len(top[1]) == 1 and top[0] != b"0"  # one key scanned: a cursor to go on from
    for bad_args in (("COUNT", 0), ("COUNT", 101), ("SCAN", 0), ("NOPE", 1), ("COUNT",)):
        try:
            r.execute_command("LOCKS.TOP", *bad_args)
        except redis.ResponseError as exc:
            assert str(exc).startswith("BADARG")
        else:
            raise AssertionError(f"LOCKS.TOP {bad_args} was accepted")
    waiter.close()


def test_a_waits_age_in_ms_shows_in_top_status_json_and_coordcore_top(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = int(r.info("server")["metrics_port"])
    a, b = r.execute_command("SESSION.OPEN", 30), r.execute_command("SESSION.OPEN", 30)
    r.execute_command("LOCK.ACQUIRE", "wait/held", a)
    r.execute_command("LOCK.ACQUIRE", "wait/free", a)
    waiter = Raw(srv.port)
    began = time.monotonic()
    waiter.send(b"*3\r\n$12\r\nLOCK.ACQUIRE\r\n$9\r\nwait/held\r\n$%d\r\n%s\r\n" % (len(b), b))
    deadline = time.monotonic() + 5
    while r.info("locks")["waiters"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # nothing commits meanwhile: the wait still ages (the next batch's time)
    _, busiest, longest = r.execute_command("LOCKS.TOP")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json?prefix=wait/") as reply:
        doc = json.loads(reply.read())
    elapsed_ms = (time.monotonic() - began) * 1000
    [entry] = [e for e in longest if e[0] == b"wait/held"]
    _, holders, waiters, revisions, ms = entry
    assert (holders, waiters, revisions) == (1, 1, 0)  # nothing changed since it queued
    assert 250 <= ms <= elapsed_ms + 2, (ms, elapsed_ms)  # never more than it can have waited
    calm = [e for e in busiest if e[0] == b"wait/free"]
    assert calm == [[b"wait/free", 1, 0, 0, 0]]  # no waiter: 0 of both
    locks = {e["key"]: e for e in doc["locks"]}
    assert set(locks) == {"wait/held", "wait/free"}
    assert 250 <= locks["wait/held"]["oldest_wait_ms"] <= elapsed_ms + 2 and locks["wait/free"]["oldest_wait_ms"] is None
    info = r.execute_command("LOCK.INFO", "wait/held")  # the rest still matches LOCK.INFO
    got = locks["wait/held"]
    assert got["holder_count"] == info[b"holder_count"] == 1 and got["waiter_count"] == info[b"waiter_count"] == 1
    assert [w["session"] for w in got["waiters"]] == [w[b"session"] for w in info[b"waiters"]]
    assert [w["ticket"] for w in got["waiters"]] == [w[b"ticket"] for w in info[b"waiters"]]
    assert [h["token"] for h in got["holders"]] == [h[b"token"] for h in info[b"holders"]]
    out = subprocess.run([sys.executable, "-m", "coordcore.cli", "top", "--port", str(srv.port), "--iterations", "1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    longest_text = out.stdout.split("Longest waits")[1]
    assert "waited (revisions)  waited (ms)" in longest_text
    [row] = [line.split() for line in longest_text.splitlines() if "wait/held" in line]
    assert row[:4] == ["wait/held", "1", "1", "0"] and int(row[4]) >= 250
    # The release grants the waiter after about 300 ms: the histograms' summary has it.
    r.execute_command("LOCK.RELEASE", "wait/held", a)
    assert isinstance(waiter.read(), int)  # its fencing token
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json?prefix=wait/") as reply:
        timings = json.loads(reply.read())["timings"]
    waits, holds = timings["waits"]["exclusive"], timings["holds"]["exclusive"]
    assert timings["bounds_ms"][:3] == [1, 2, 4]
    assert waits["count"] == 3 and waits["mean_ms"] >= 250 / 3  # two at once (0 ms), one >= 250 ms
    assert waits["p50_ms"] == 1 and waits["p99_ms"] is not None and waits["p99_ms"] >= 256
    assert holds["count"] == 1 and holds["mean_ms"] >= 250  # wait/held's first hold ended
    assert timings["waits"]["shared"] == {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}
    waiter.close()


def test_top_shows_an_unknown_wait_as_a_dash() -> None:
    from coordcore.server.status_cli import _format_top

    text = _format_top([b"0", [[b"k", 1, 2, 5, None]], [[b"k", 1, 2, 5, None], [b"j", 1, 1, 3, 40]]])
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and "key" not in line]
    assert rows == [["k", "1", "2", "5", "-"], ["k", "1", "2", "5", "-"], ["j", "1", "1", "3", "40"]]


def test_session_and_recovery_log_lines(serve: Serve) -> None:
    srv = serve("--log-level", "debug")
    r = redis.Redis(port=srv.port)
    handle = r.execute_command("SESSION.OPEN", "0.2")
    r.execute_command("LOCK.ACQUIRE", "log/a", handle)
    closed = r.execute_command("SESSION.OPEN", 10)
    r.execute_command("SESSION.CLOSE", closed)
    deadline = time.monotonic() + 10
    while "expired" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.stop()
    log = srv.log()
    assert "session 1 opened" in log and "session 1 expired" in log and "session 2 closed" in log
    assert "batch committed" in log
    again = serve(data=srv.data_dir)
    redis.Redis(port=again.port).ping()
    again.stop()
    assert "recovered: snapshot none, " in again.log() and "records replayed" in again.log()
