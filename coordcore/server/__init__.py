"""The coordcore server: RESP over TCP on uvloop (``coordcore serve``).

See :mod:`coordcore.server.server` for the lifecycle and the ID worker processes,
:mod:`coordcore.server.protocol` for the connection (its states, pipelining, parking,
back-pressure, bounds), :mod:`coordcore.server.commands` /
:mod:`coordcore.server.lockcmds` for the commands, :mod:`coordcore.server.core` for
what they agree on (the command table's entries, the connection as handlers see it,
the server as the connection sees it) and :mod:`coordcore.server.budget` for the
buffer budget across connections.
"""
from coordcore.server.server import Server, ServerConfig, run_server

__all__ = ["Server", "ServerConfig", "run_server"]
