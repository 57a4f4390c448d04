"""DESIGN.md's layer rules, checked on the source: who may import whom.

The lock layer knows nothing of the wire (it is driven through its pipeline), the
clients nothing of the server, and native code opens no sockets. The rules are read
from every import statement (TYPE_CHECKING ones too: a type-only import is still a
dependency a reader has to follow) and every ``require("<native module>")``.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "coordcore"


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, absolute, plus ``coordcore._native.<m>`` for each
    ``require("<m>")``."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(f"coordcore._native.{arg.value}")
    return found


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_the_import_reader_sees_every_form(tmp_path: Path) -> None:
    """The checker itself: each import form a violation could take is found."""
    pkg = tmp_path / "coordcore" / "locks"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("import coordcore.server.resp\n"
                   "from coordcore.server import protocol\n"
                   "from ..client import sync\n"
                   "from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from coordcore.server.server import Server\n"
                   "_lw = require('lockwire')\n")
    found = _imports(src, tmp_path)
    assert {"coordcore.server.resp", "coordcore.server.protocol", "coordcore.client.sync",
            "coordcore.server.server.Server", "coordcore._native.lockwire"} <= found


def test_the_lock_layer_imports_nothing_of_the_server_or_the_wire() -> None:
    assert _violations("locks", ("coordcore.server", "coordcore.client", "coordcore.cluster",
                                 "coordcore._native.lockwire")) == []


def test_the_cluster_layer_imports_nothing_of_the_server_or_the_clients() -> None:
    """The etcd log is a store under the lock layer; the server drives it, not the reverse."""
    assert _violations("cluster", ("coordcore.server", "coordcore.client")) == []


def test_the_clients_import_nothing_of_the_server() -> None:
    assert _violations("client", ("coordcore.server",)) == []


def test_native_code_opens_no_sockets() -> None:
    pattern = re.compile(r"\bsocket\s*\(|<sys/socket\.h>|\bimport socket\b|from socket\b|\bbind\s*\(|\bconnect\s*\(")
    offenders = []
    for path in sorted((PKG / "_native").iterdir()):
        if path.suffix in (".pyx", ".pxd", ".pxi", ".h", ".c", ".py"):
            if path.suffix == ".c" and path.with_suffix(".pyx").exists():
                continue  # generated from the .pyx checked here
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("module", ["coordcore.errors", "coordcore.ids", "coordcore.ring", "coordcore.locks"])
def test_importing_a_layer_does_not_import_the_client_or_the_server(module: str) -> None:
    code = (f"import sys, {module}\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('coordcore.client', 'coordcore.server')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.strip()
    assert out == "[]"
