"""The coordcore server: RESP over TCP on uvloop (``coordcore serve``).

See :mod:`coordcore.server.server` for the lifecycle and the ID worker processes,
:mod:`coordcore.server.protocol` for the connection (pipelining, parking,
back-pressure, bounds) and :mod:`coordcore.server.commands` /
:mod:`coordcore.server.lockcmds` for the commands.
"""
from coordcore.server.server import Server, ServerConfig, run_server

__all__ = ["Server", "ServerConfig", "run_server"]
