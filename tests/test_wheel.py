"""The wheel recipe: sdist -> wheel -> auditwheel -> fresh venv -> compiled modules load.

The recipe runs in the background from the start of the session (tests/wheel_recipe.py).
"""
from pathlib import Path

import pytest

from tests.wheel_recipe import RECIPE

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_recipe_builds_repairs_installs_and_imports() -> None:
    code, output = RECIPE.result(timeout=900)
    assert code == 0, output[-8000:]
    assert "compiled modules load from site-packages" in output
    assert "wheel OK:" in output
    wheels = list((ROOT / "wheels" / "dist").rglob("coordcore-*.whl"))
    assert wheels, "no wheel was produced"
