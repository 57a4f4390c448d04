"""PNG plots for the benchmark reports, written to bench/plots/ and linked from RESULTS.md.

A figure is a row of :class:`Panel` s, each a few labelled :class:`Line` s; ``save``
draws it with matplotlib's Agg backend (no display). Plots are optional: with
``--no-plots`` on a script's command line, ``COORDCORE_BENCH_PLOTS=0``, or without
matplotlib installed, :func:`save` draws nothing and the script still prints its
figures. matplotlib is in the ``bench`` extra, not the core or ``test`` ones.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PLOTS = Path(__file__).resolve().parent / "plots"

#: The levels of the latency quantiles the load generators report (0.001 .. 0.999).
LEVELS = tuple(k / 1000 for k in range(1, 1000))

# One colour per system across every figure, so "etcd" looks the same everywhere.
_COLOURS = {"coordcore": "#1f77b4", "redis": "#d62728", "redis-aof": "#ff7f0e", "redis-py": "#e377c2",
            "etcd": "#2ca02c", "zk": "#9467bd", "model": "0.3"}


@dataclass
class Line:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    key: str = ""        # a system name from _COLOURS, for a consistent colour
    marker: str = "o"    # "" for a plain line (long series, CDFs)
    dashed: bool = False
    width: float = 1.6   # thinner for long, dense series


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    xscale: str = "linear"   # "log", "logit", ...
    yscale: str = "linear"
    hlines: list[tuple[str, float]] = field(default_factory=list)  # (label, y): ceilings, ideals
    ylim: tuple[float, float] | None = None
    xticks: Sequence[float] | None = None  # e.g. the client counts measured, on a log axis


def quantiles(values: Sequence[float], levels: Sequence[float] = LEVELS) -> list[float]:
    """``values`` at each level, indexed as the load generator does: sorted[min(n-1, int(n*q))]."""
    s = sorted(values)
    if not s:
        return []
    return [s[min(len(s) - 1, int(len(s) * q))] for q in levels]


def cdf_line(label: str, quantiles_ms: Sequence[float], key: str = "") -> Line:
    """A latency CDF as a line: x the latency at each of LEVELS, y the level."""
    return Line(label, list(quantiles_ms), list(LEVELS[:len(quantiles_ms)]), key=key, marker="")


def wanted() -> bool:
    """Whether to draw: not with --no-plots or COORDCORE_BENCH_PLOTS=0, and only with matplotlib."""
    if "--no-plots" in sys.argv or os.environ.get("COORDCORE_BENCH_PLOTS") == "0":
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("  plots skipped: matplotlib is not installed (./dev bench installs the bench extra)",
              file=sys.stderr, flush=True)
        return False
    return True


def save(name: str, title: str, panels: Sequence[Panel], *, out_dir: Path | None = None,
         shared_legend: bool = False) -> Path | None:
    """Draw ``panels`` side by side into ``out_dir``/``name``.png (default bench/plots/);
    returns the path, or None when plots are off (see :func:`wanted`). ``shared_legend``:
    one legend below the panels (the same lines in each), so that none hides a line."""
    if not panels:
        raise ValueError("a figure needs at least one panel")
    if not wanted():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            ax.plot(line.xs, line.ys, label=line.label, color=_COLOURS.get(line.key), marker=line.marker or None,
                    linestyle="--" if line.dashed else "-", markersize=4, linewidth=line.width)
        for label, y in panel.hlines:
            ax.axhline(y, color="0.35", linestyle=":", linewidth=1.4, label=label)
        ax.set_xscale(panel.xscale)
        ax.set_yscale(panel.yscale)
        if panel.yscale == "logit":  # percentiles: the tail is what a CDF is read for
            ticks = [0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999]
            ax.set_yticks(ticks, [f"{t * 100:g}%" for t in ticks])
            ax.yaxis.set_minor_locator(NullLocator())
        if panel.xticks is not None:
            ax.set_xticks(list(panel.xticks), [f"{t:g}" for t in panel.xticks])
            ax.xaxis.set_minor_locator(NullLocator())
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="major", alpha=0.35)
        if not shared_legend:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=12)
    if shared_legend:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
        fig.set_figheight(5.4)
        fig.tight_layout(rect=(0, 0.13, 1, 1))
    else:
        fig.tight_layout()
    out_dir = out_dir or PLOTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"  plot: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", flush=True)
    return path
