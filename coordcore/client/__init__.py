"""Clients of the coordcore server: :class:`Client` (blocking, thread safe) and
:class:`AsyncClient` (asyncio). Both speak RESP3, map error replies to coordcore's
exception classes, keep sessions alive in the background, hand out locks as context
managers yielding a :class:`Grant` with its fencing ``token``, and prefetch IDs."""
from coordcore.client._common import Contender, Grant, IdRuns, Leader, LockInfo, WatchEvent
from coordcore.client._wire import Endpoint
from coordcore.client.aio import AsyncClient, AsyncElection, AsyncIdBuffer, AsyncPipeline, AsyncSession, AsyncWatch
from coordcore.client.sync import Client, IdBuffer, Pipeline, Session, SyncElection, Watch
from coordcore.client.worker_ids import ServerWorkerIds

__all__ = [
    "AsyncClient",
    "AsyncElection",
    "AsyncIdBuffer",
    "AsyncPipeline",
    "AsyncSession",
    "AsyncWatch",
    "Client",
    "Contender",
    "Endpoint",
    "Grant",
    "IdBuffer",
    "IdRuns",
    "Leader",
    "LockInfo",
    "Pipeline",
    "ServerWorkerIds",
    "Session",
    "SyncElection",
    "Watch",
    "WatchEvent",
]
