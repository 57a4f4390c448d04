"""bench/_plots.py: a tiny data set becomes a readable PNG; without matplotlib, or with
--no-plots, nothing is drawn and nothing fails.

matplotlib is in the ``bench`` extra only (heavy, and no library code needs it), so the
PNG test skips, saying why, where only the ``test`` extra is installed (./dev test).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def plots(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_plots", BENCH / "_plots.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["bench"])  # no --no-plots from pytest's own command line
    monkeypatch.delenv("COORDCORE_BENCH_PLOTS", raising=False)
    return mod


def tiny_panels(plots: ModuleType) -> list:
    lat = [0.2, 0.3, 0.3, 0.5, 0.9, 1.4, 2.0, 7.5]
    cdf = plots.Panel("latency", "acquire latency (ms)", "percentile",
                      [plots.cdf_line("coordcore", plots.quantiles(lat), key="coordcore"),
                       plots.cdf_line("etcd", plots.quantiles([x * 10 for x in lat]), key="etcd")],
                      xscale="log", yscale="logit")
    rate = plots.Panel("throughput", "clients", "cycles/s",
                       [plots.Line("coordcore", [1, 8, 32], [3000, 15000, 40000], key="coordcore")],
                       xscale="log", yscale="log", xticks=[1, 8, 32], hlines=[("ceiling", 50000)])
    return [cdf, rate]


def test_tiny_data_set_makes_a_png(plots: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the bench extra (./dev bench installs it)")
    from PIL import Image  # a matplotlib dependency

    path = plots.save("tiny", "A tiny figure", tiny_panels(plots), out_dir=tmp_path)
    assert path == tmp_path / "tiny.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == (1280, 460)  # two panels of 6.4 x 4.6 in at 100 dpi
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # lines, text and antialiasing: not blank


def test_no_plots_flag_draws_nothing(plots: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["compare_ring.py", "--no-plots"])
    assert plots.save("tiny", "A tiny figure", tiny_panels(plots), out_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_bench_run_no_plots_reaches_the_scripts(plots: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # bench/run --no-plots sets this for the scripts it runs (their own argv has no flag)
    monkeypatch.setenv("COORDCORE_BENCH_PLOTS", "0")
    assert plots.save("tiny", "A tiny figure", tiny_panels(plots), out_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_says_why(plots: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert plots.save("tiny", "A tiny figure", tiny_panels(plots), out_dir=tmp_path) is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_quantiles_index_as_the_load_generator(plots: ModuleType) -> None:
    # lockload.c: lat[min(n-1, int(n*q))] over the sorted latencies
    assert plots.quantiles([5.0, 1.0, 3.0, 2.0], [0.001, 0.25, 0.5, 0.75, 0.999]) == [1.0, 2.0, 3.0, 5.0, 5.0]
    assert plots.quantiles([]) == []
    assert len(plots.quantiles([1.0])) == len(plots.LEVELS) == 999


def test_a_figure_needs_a_panel(plots: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one panel"):
        plots.save("empty", "nothing", [], out_dir=tmp_path)
