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
    submodules = {"errors", "ids", "ring", "locks", "server", "client", "cli"}
    assert public - set(coordcore.__all__) <= submodules
