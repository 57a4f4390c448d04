"""The wheel recipe: sdist -> wheel -> auditwheel -> fresh venv -> compiled modules load."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_recipe_builds_repairs_installs_and_imports() -> None:
    result = subprocess.run([str(ROOT / "wheels" / "build")], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "compiled modules load from site-packages" in result.stdout
    assert "wheel OK:" in result.stdout
    wheels = list((ROOT / "wheels" / "dist").rglob("coordcore-*.whl"))
    assert wheels, "no wheel was produced"
