"""A client process of a fault run: ``python client_worker.py '<json config>'``.

It uses coordcore's public sync API only (``Client``, ``client.session(ttl)``,
``client.lock(key, session=..., timeout=...)``), so it runs against any built checkout
on PYTHONPATH. It contends for random keys in a loop, writes to the shared fenced
resource while it holds (1-3 writes with pauses between, so a SIGSTOP often lands
mid-hold), and records everything (see history.py), including every keep-alive its
client's background thread sends (the session's ``keepalive`` method is wrapped).

Control files in ``control`` (the orchestrator creates them): ``quiesce`` (finish the
current hold, release it, write ``idle-<process>``, keep the session open),
then ``close`` (close the session and the client, exit 0).
"""
from __future__ import annotations

import faulthandler
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.fault.fence import FenceClient
from tests.fault.history import Outcome, Recorder

from coordcore import Client
from coordcore.client.sync import Session
from coordcore.errors import ConnectionLost, CoordcoreError


class FenceDown(RuntimeError):
    """The fence server is part of the harness: losing it ends the run, loudly."""


def outcome_of(exc: BaseException) -> tuple[Outcome, str]:
    """``info`` (unknown) when the connection broke, ``fail`` for an error reply."""
    if isinstance(exc, ConnectionLost) or (isinstance(exc, OSError) and not isinstance(exc, CoordcoreError)):
        return "info", "CONNLOST"
    if isinstance(exc, CoordcoreError):
        return "fail", str(exc.code)
    return "info", type(exc).__name__


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.process = str(cfg["process"])
        self.rec = Recorder(Path(cfg["history"]), self.process)
        self.rng = random.Random(int(cfg["seed"]))
        self.control = Path(cfg["control"])
        self.keys: list[str] = list(cfg["keys"])
        self.ttl = float(cfg["ttl"])
        # "servers": a cluster's addresses (the client follows its leader); else one port.
        servers = cfg.get("servers")
        self.client = Client(servers, connect_timeout=2.0) if servers else Client(port=int(cfg["port"]),
                                                                                  connect_timeout=2.0)
        self.fence = FenceClient(int(cfg["fence_port"]), self.process)
        self.session: Session | None = None
        self.record_keepalives()

    def open_session(self) -> Session | None:
        op = self.rec.invoke("open", ttl=self.ttl)
        try:
            s = self.client.session(self.ttl)
        except (CoordcoreError, OSError) as exc:
            outcome, code = outcome_of(exc)
            self.rec.complete(op, outcome, error=code)
            return None
        self.rec.complete(op, "ok", session=s.id, ttl=self.ttl)
        return s

    def record_keepalives(self) -> None:
        """Record every extension request. Since the clients share one core, the
        background keep-alive runs the core's ``keepalive`` procedure, not
        ``Session.keepalive``: wrap the procedure (the one place both go through)."""
        core = self.client._core
        original = core.keepalive
        rec = self.rec

        def recorded(s: Any) -> Any:
            kop = rec.invoke("keepalive", session=s.id)
            try:
                result = yield from original(s)
            except BaseException as exc:
                outcome, code = outcome_of(exc)
                rec.complete(kop, outcome, error=code)
                raise
            rec.complete(kop, "ok")
            return result

        core.keepalive = recorded  # type: ignore[method-assign]

    def fence_write(self, key: str, token: int, sid: int) -> None:
        op = self.rec.invoke("write", key=key, token=token, session=sid)
        try:
            accepted = self.fence.write(key, token)
        except OSError as exc:
            raise FenceDown(f"fence server: {exc}") from exc
        self.rec.complete(op, "ok" if accepted else "fail", error=None if accepted else "FENCED")

    def cycle(self, s: Session) -> None:
        key = self.rng.choice(self.keys)
        hold_lo, hold_hi = self.cfg["hold"]
        op = self.rec.invoke("acquire", key=key, session=s.id)
        rop: int | None = None
        granted = False
        try:
            with self.client.lock(key, session=s, timeout=float(self.cfg["acquire_timeout"])) as grant:
                granted = True
                self.rec.complete(op, "ok", token=grant.token)
                for _ in range(self.rng.randint(1, 3)):
                    self.fence_write(key, grant.token, s.id)
                    time.sleep(self.rng.uniform(hold_lo, hold_hi))
                rop = self.rec.invoke("release", key=key, session=s.id, token=grant.token)
            self.rec.complete(rop, "ok")
        except (CoordcoreError, OSError) as exc:
            outcome, code = outcome_of(exc)
            if not granted:
                self.rec.complete(op, outcome, error=code)
            elif rop is not None:
                self.rec.complete(rop, outcome, error=code)
            else:
                raise
            if code == "NOSESSION":
                s.expired = True

    def run(self) -> None:
        try:
            while not (self.control / "quiesce").exists():
                s = self.session
                if s is None or s.expired or s.closed:
                    self.session = s = self.open_session()
                    if s is None:
                        time.sleep(0.1)
                        continue
                self.cycle(s)
            self.rec.event("idle", session=None if self.session is None else self.session.id)
            (self.control / f"idle-{self.process}").touch()
            deadline = time.monotonic() + 120.0
            while not (self.control / "close").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.session is not None and not self.session.closed:
                op = self.rec.invoke("close", session=self.session.id)
                try:
                    self.session.close()
                    self.rec.complete(op, "ok")
                except (CoordcoreError, OSError) as exc:
                    outcome, code = outcome_of(exc)
                    self.rec.complete(op, outcome, error=code)
            self.client.close()
        finally:
            self.fence.close()
            self.rec.close()


def main(argv: list[str]) -> int:
    # A harness that finds this worker stuck asks where (every thread's stack, to the log).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    Worker(json.loads(argv[1])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
