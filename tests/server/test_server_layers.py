"""The server's modules stay layered: no import cycle among them (TYPE_CHECKING and
function-level imports count), the command modules never import the connection or
the server, only lockcmds calls the lock service's server-facing methods, and the
command table's HOT flag marks exactly the commands the native path takes."""
from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import coordcore.server
from coordcore.ids import Snowflake
from coordcore.locks.service import LockService
from coordcore.server import commands, lockcmds
from coordcore.server.core import Flag
from coordcore.server.log import configure

PACKAGE = "coordcore.server"
SERVER_DIR = Path(coordcore.server.__file__).parent
MODULES = {f"{PACKAGE}.{p.stem}": p for p in SERVER_DIR.glob("*.py") if p.stem != "__init__"}


def _imports(module: str, path: Path) -> set[str]:
    """Every coordcore.server module ``module`` imports, wherever the import stands."""
    found: set[str] = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # ``from coordcore.server import resp`` imports the submodule resp.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle among the server's modules, or None."""
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return stack[stack.index(module):] + [module]
        if module in done:
            return None
        for dep in sorted(GRAPH[module]):
            cycle = visit(dep, [*stack, module])
            if cycle is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(GRAPH):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_the_graph_is_read() -> None:
    # The checks below mean something only if the parse finds the edges that exist.
    assert f"{PACKAGE}.protocol" in GRAPH[f"{PACKAGE}.server"]
    assert f"{PACKAGE}.lockcmds" in GRAPH[f"{PACKAGE}.server"]  # a function-level import
    assert f"{PACKAGE}.resp" in GRAPH[f"{PACKAGE}.commands"]  # ``from coordcore.server import resp``


def test_no_import_cycle_among_server_modules() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_command_modules_import_neither_the_connection_nor_the_server() -> None:
    """Handlers see a connection as core.Client and get what they need when their
    table is built: they never reach the server."""
    for module in ("commands", "lockcmds", "core", "budget", "resp", "log", "acl"):
        deps = {d.rpartition(".")[2] for d in GRAPH[f"{PACKAGE}.{module}"]}
        assert not deps & {"protocol", "server"}, (module, deps)
    assert {d.rpartition(".")[2] for d in GRAPH[f"{PACKAGE}.protocol"]} <= {"core", "budget", "resp", "log", "acl"}


def test_only_lockcmds_calls_the_lock_services_server_facing_methods() -> None:
    """One module to change when the service renames them."""
    names = {"pipeline", "admit_hot", "verify_credential", "session_for_credential"}
    for module, path in MODULES.items():
        used = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
        if module != f"{PACKAGE}.lockcmds":
            assert not used & names, (module, used & names)


def _pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def test_the_hot_flag_marks_exactly_what_the_native_path_takes(tmp_path: Path) -> None:
    lw = lockcmds._lw
    secret = b"0123456789abcdef" * 2

    async def main() -> None:
        svc = await LockService.in_memory()
        try:
            table = lockcmds.LockCommands(svc, log=configure("kv", "critical", name="coordcore.server.layers"),
                                          max_reply_items=100).commands()
        finally:
            await svc.close()
        ids = Snowflake(3, clock="logical")
        table.update(commands.id_commands(ids, max_range=10, endpoints=list))
        # A lane of its own (nothing reaches the service), which accepts session 1.
        lane = lw.WireLane(None, lambda *args: None, [])
        lane.verify = lambda handle: 1 if handle == b"1." + secret else 0
        for name, entry in table.items():
            wire = lw.WireConn(object(), 16, 4096)
            wire.id_next = ids.next_id
            # Each command in the plainest form the lane knows (extra words are refused).
            args = [] if name == b"ID.NEXT" else [b"k", b"1." + secret] + ([b"2"] if name in (b"SEM.ACQUIRE", b"SEM.TRY") else [])
            wire.feed(_pack(name, *args))
            taken = wire.run_hot(lane, 10)
            assert taken == (1 if entry.flags & Flag.HOT else 0), name

    asyncio.run(main())
