"""The compiled hot paths of coordcore (Cython). Users import the facade modules instead.

There is no pure-Python fallback: a missing extension is an installation error, and
:func:`require` says so plainly.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: Every compiled module the package ships; the tests and the wheel recipe check each.
COMPILED = ("snowflake", "uuidgen", "ring", "lockmachine", "lockwire", "syncwrite")


def require(name: str) -> ModuleType:
    """Import ``coordcore._native.<name>`` or raise an ImportError that says how to fix it."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise ImportError(
            f"coordcore's compiled module coordcore._native.{name} is missing or broken ({exc}). "
            "coordcore has no pure-Python fallback: install it from a wheel, or build it from "
            "source with a C compiler (`pip install .`, or `./dev test` in a checkout)."
        ) from exc
