"""The lock service's pluggable log, as :class:`~coordcore.cluster.log.EtcdLog` implements it.

This copies the interface the lead is landing in ``coordcore/locks/store.py`` so the
cluster package type-checks on its own; once that lands, import it from there and
delete this file.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["LogStore"]


class LogStore(Protocol):
    max_record_bytes: int
    syncs: bool

    @property
    def next_index(self) -> int: ...

    async def replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> None: ...

    def append(self, record: bytes) -> asyncio.Future[int]: ...

    async def write_snapshot(self, index: int, payload: bytes) -> None: ...

    def applied(self, revision: int) -> None: ...

    async def close(self) -> None: ...
