"""Clients of the coordcore server: :class:`Client` (blocking, thread safe) and
:class:`AsyncClient` (asyncio). Both speak RESP3, map error replies to coordcore's
exception classes, keep sessions alive in the background, hand out locks as context
managers yielding a :class:`~coordcore.types.Grant` with its fencing ``token``, and prefetch IDs.

Names: the blocking client's classes are unprefixed (``Client``, ``Session``,
``Election``, ``Watch``, ``Pipeline``, ``IdBuffer``), the asyncio client's carry
``Async`` (``AsyncClient``, ``AsyncSession``...). Grants and leaders are the value
types of :mod:`coordcore.types`, the same as the embedded service's."""
from coordcore.client._common import Contender, IdRuns, LockInfo, WatchEvent
from coordcore.client._wire import Endpoint
from coordcore.client.aio import AsyncClient, AsyncElection, AsyncIdBuffer, AsyncPipeline, AsyncSession, AsyncWatch
from coordcore.client.sync import Client, Election, IdBuffer, Pipeline, Session, SyncElection, Watch
from coordcore.client.worker_ids import ServerWorkerIds
from coordcore.types import Grant, Leader

__all__ = [
    "AsyncClient",
    "AsyncElection",
    "AsyncIdBuffer",
    "AsyncPipeline",
    "AsyncSession",
    "AsyncWatch",
    "Client",
    "Contender",
    "Election",
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
