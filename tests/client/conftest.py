"""Client tests reuse the server helpers and fixtures of tests/server/ccserver.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from ccserver import serve  # noqa: E402,F401
