"""The public API is typed: mypy --strict passes and every .pyi stub matches its module."""
import subprocess
import sys
from pathlib import Path

import pytest

from coordcore import _native

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_package() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", _native.COMPILED)
def test_stub_matches_native_module(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", f"coordcore._native.{name}"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_and_marker_ship_beside_the_modules() -> None:
    package = ROOT / "coordcore"
    assert (package / "py.typed").exists()
    for name in _native.COMPILED:
        assert (package / "_native" / f"{name}.pyi").exists(), name
