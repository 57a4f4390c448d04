"""The `coordcore` command, run as users run it."""
import json
import subprocess
import sys
from pathlib import Path

from coordcore.ids import decode


def coordcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordcore.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_id_issues_increasing_ids_and_explains_the_last() -> None:
    result = coordcore("id", "-n", "5", "--worker-id", "7")
    assert result.returncode == 0, result.stderr
    ids = [int(x) for x in result.stdout.split()]
    assert len(ids) == 5 and ids == sorted(set(ids))
    assert all(decode(i).worker == 7 for i in ids)
    assert "5 IDs from worker 7" in result.stderr


def test_id_decode_json() -> None:
    result = coordcore("id", "--decode", "1541815603606036480", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["timestamp_ms"] == 1656432460105 and row["time"].startswith("2022-06-28T16:07:40")


def test_id_bad_input_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = coordcore("id", "--worker-id", "99")
    assert result.returncode == 2 and "worker_id must be in [0, 31]" in result.stderr
    assert "Traceback" not in result.stderr
    result = coordcore("id", "--decode", "not-a-number")
    assert result.returncode == 2 and "not an integer ID" in result.stderr
    result = coordcore("id", "--state-file", str(tmp_path / "no" / "such" / "dir"))
    assert result.returncode == 2 and "cannot open state file" in result.stderr
