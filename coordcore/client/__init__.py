"""Clients of the coordcore server: :class:`Client` (blocking, thread safe) and
:class:`AsyncClient` (asyncio). Both speak RESP3, map error replies to coordcore's
exception classes, keep sessions alive in the background, hand out locks as context
managers yielding a :class:`Grant` with its fencing ``token``, and prefetch IDs."""
from coordcore.client._common import Contender, Grant, IdRuns, Leader, LockInfo, WatchEvent
from coordcore.client._wire import Endpoint
from coordcore.client.aio import AsyncClient, AsyncIdBuffer, AsyncPipeline, AsyncSession
from coordcore.client.sync import Client, IdBuffer, Pipeline, Session

__all__ = [
    "AsyncClient",
    "AsyncIdBuffer",
    "AsyncPipeline",
    "AsyncSession",
    "Client",
    "Contender",
    "Endpoint",
    "Grant",
    "IdBuffer",
    "IdRuns",
    "Leader",
    "LockInfo",
    "Pipeline",
    "Session",
    "WatchEvent",
]
