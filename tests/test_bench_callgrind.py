"""bench/_callgrind.py: a callgrind dump's self cost per function, names compressed as
callgrind writes them, callee costs left out, unnamed functions named by their object."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

DUMP = """\
version: 1
creator: callgrind-3.19.0
events: Ir
summary: 1111

ob=(1) /usr/bin/python3.11
fl=(1) ???
fn=(1) main
0 100
cob=(2) /usr/lib/x86_64-linux-gnu/libcrypto.so.3
cfi=(1)
cfn=(2) 0x000000000029ad80
calls=2 0
0 1000
0 10

ob=(2)
fl=(1)
fn=(2)
0 1000
ob=(1)
fn=(3) helper
0 1
fn=(1)
0 0
"""


@pytest.fixture
def cg(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])  # its own imports (_loadgen, _peers)
    spec = importlib.util.spec_from_file_location("_bench_callgrind", BENCH / "_callgrind.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


def test_self_cost_by_function(cg: ModuleType, tmp_path: Path) -> None:
    dump = tmp_path / "cg.out"
    dump.write_text(DUMP)
    assert cg.callgrind_total(dump) == 1111
    assert cg.self_cost_by_function(dump) == {
        "main": 110, "0x000000000029ad80 [libcrypto.so.3]": 1000, "helper": 1}


def test_differences_largest_first(cg: ModuleType) -> None:
    runs_on = [{"cycles": 10, "functions": {"a": 100, "b": 50}}]
    runs_off = [{"cycles": 10, "functions": {"a": 90, "c": 30}}]
    diffs = cg.differences(cg.mean_per_cycle(runs_on), cg.mean_per_cycle(runs_off))
    assert diffs == [(5.0, "b"), (-3.0, "c"), (1.0, "a")]
