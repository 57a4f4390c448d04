"""Lock, session, semaphore, election and watch commands (wired to the LockService)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordcore.server.protocol import Handler
    from coordcore.server.server import Server


async def open_backend(server: Server) -> Any:
    return None


async def close_backend(server: Server) -> None:
    return None


def lock_commands() -> dict[bytes, Handler]:
    return {}


def info_lines(server: Server) -> list[str]:
    return []
