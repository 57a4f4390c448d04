"""Server test fixtures live in ccserver.py (shared with tests/client)."""
from ccserver import serve  # noqa: F401
