"""The wheel recipe (``wheels/build``) as a background process of the test session.

It compiles every native module again from the sdist, which takes minutes of CPU while
the rest of the suite mostly waits on sockets and child processes. The conftest starts
it as soon as collection shows that ``tests/test_wheel.py`` will run, at low priority,
and the test collects its result, so the two overlap instead of adding up.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


class WheelRecipe:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self._proc is None:
            self._log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(["nice", "-n", "15", str(ROOT / "wheels" / "build")], cwd=ROOT,
                                          stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def result(self, timeout: float) -> tuple[int, str]:
        """Wait for the recipe (starting it if nobody did): its exit code and output."""
        self.start()
        assert self._proc is not None and self._log is not None
        code = self._proc.wait(timeout)
        self._log.seek(0)
        return code, self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop a recipe still running (the session ended early): its whole process
        group, so that no pip or gcc of it outlives the session."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


RECIPE = WheelRecipe()
