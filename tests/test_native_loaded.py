"""The compiled modules are the ones in use: no silent pure-Python fallback."""
import importlib
import importlib.machinery

import pytest

import coordcore
from coordcore import _native


@pytest.mark.parametrize("name", _native.COMPILED)
def test_compiled_module_is_loaded(name: str) -> None:
    module = importlib.import_module(f"coordcore._native.{name}")
    assert module.__file__ is not None
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__


def test_missing_extension_says_so_plainly() -> None:
    with pytest.raises(ImportError, match="compiled module coordcore._native.nonexistent is missing"):
        _native.require("nonexistent")


def test_facade_exports_exactly_all() -> None:
    for name in coordcore.__all__:
        assert hasattr(coordcore, name), name
    public = {n for n in vars(coordcore) if not n.startswith("_")}
    submodules = {"errors", "ids", "uuids", "ring", "locks", "server", "client", "cli", "cluster", "types", "audit", "tracing"}
    assert public - set(coordcore.__all__) <= submodules


def test_importing_without_the_extension_fails_plainly() -> None:
    """With the compiled module hidden, using the facade raises a clear ImportError (no
    fallback to something slower; the facade loads a name's module on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'coordcore._native.snowflake':\n"
        "            raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "try:\n"
        "    from coordcore import Snowflake\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "compiled module coordcore._native.snowflake is missing or broken" in out.stdout
    assert "no pure-Python fallback" in out.stdout


def test_importing_errors_or_ids_loads_neither_the_client_nor_the_locks() -> None:
    import subprocess
    import sys

    code = ("import sys, coordcore.errors, coordcore.ids; "
            "print(sorted(m for m in sys.modules if m.startswith('coordcore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "coordcore.client" not in out and "coordcore.locks" not in out and "coordcore.ids" in out, out


def test_every_public_name_resolves_and_the_facade_lists_them_all() -> None:
    import coordcore

    for name in coordcore.__all__:
        assert getattr(coordcore, name) is not None, name
    assert set(coordcore.__all__) == set(coordcore._HOME) | {"__version__"}
    assert dir(coordcore) == sorted(coordcore.__all__)
