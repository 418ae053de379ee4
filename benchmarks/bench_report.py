"""Results: per-round numbers, summaries, ratios, the table, the JSON and the chart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import Measurement, Summary

#: Every ratio is an implementation's number divided by this one's, round by round.
BASELINE = "trio_ssl"

LABELS: dict[str, str] = {
    "membio": "MemoryBIOStream",
    "trio_ssl": "trio.SSLStream",
    "anyio": "anyio TLSStream (trio)",
    "asyncio": "asyncio streams + ssl",
    "blocking": "blocking ssl.SSLSocket",
    "plain_trio": "trio, no TLS",
    "floor": "floor: SSLObject on trio",
    "pump": "SSLObject pump, no I/O",
}


@dataclass
class WorkloadResult:
    id: str
    title: str
    unit: str
    higher_is_better: bool
    description: str
    params: dict[str, Any]
    rounds: dict[str, list[float]] = field(default_factory=dict)
    negotiated: dict[str, set[tuple[str | None, str | None]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def record(self, impl: str, measurement: Measurement) -> None:
        self.rounds.setdefault(impl, []).append(measurement.value)
        self.negotiated.setdefault(impl, set()).add((measurement.cipher, measurement.version))

    def summary(self, impl: str) -> Summary:
        return Summary.of(self.rounds[impl])

    def ratios(self, impl: str) -> list[float] | None:
        """value / baseline value, round by round (None without a baseline)."""
        baseline = self.rounds.get(BASELINE)
        if baseline is None:
            return None
        return [value / base for value, base in zip(self.rounds[impl], baseline, strict=True)]


def negotiated_suites(results: list[WorkloadResult]) -> dict[str, list[list[str | None]]]:
    """Every (cipher, version) each TLS implementation negotiated, across workloads."""
    suites: dict[str, set[tuple[str | None, str | None]]] = {}
    for result in results:
        for impl, seen in result.negotiated.items():
            suites.setdefault(impl, set()).update(pair for pair in seen if pair != (None, None))
    return {impl: sorted([list(pair) for pair in seen]) for impl, seen in suites.items() if seen}


def _number(value: float) -> str:
    if value >= 100_000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(results: list[WorkloadResult]) -> str:
    lines: list[str] = []
    for result in results:
        better = "higher" if result.higher_is_better else "lower"
        lines.append("")
        lines.append(f"{result.id}: {result.title}")
        lines.append(f"  [{result.unit}, {better} is better; ratio = value / {LABELS[BASELINE]}]")
        lines.append(
            f"  {'implementation':<25} {'median':>10} {'min-max':>23}"
            f"   {'ratio':>7} {'ratio min-max':>15}"
        )
        for impl, values in result.rounds.items():
            summary = Summary.of(values)
            span = f"{_number(summary.min)}-{_number(summary.max)}"
            ratios = result.ratios(impl)
            if ratios:
                rs = Summary.of(ratios)
                ratio = f"{_ratio(rs.median):>7} {_ratio(rs.min) + '-' + _ratio(rs.max):>15}"
            else:
                ratio = f"{'-':>7} {'-':>15}"
            lines.append(f"  {LABELS[impl]:<25} {_number(summary.median):>10} {span:>23}   {ratio}")
        for impl, reason in result.skipped.items():
            lines.append(f"  {LABELS[impl]:<25} {'n/a':>10}   ({reason})")
    return "\n".join(lines)


def to_json(results: list[WorkloadResult], meta: dict[str, Any]) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for result in results:
        entries: dict[str, Any] = {}
        for impl, values in result.rounds.items():
            summary = result.summary(impl)
            entry: dict[str, Any] = {
                "label": LABELS[impl],
                "rounds": values,
                "median": summary.median,
                "min": summary.min,
                "max": summary.max,
                "ratio": None,
            }
            ratios = result.ratios(impl)
            if ratios:
                rs = Summary.of(ratios)
                entry["ratio"] = {
                    "rounds": ratios,
                    "median": rs.median,
                    "min": rs.min,
                    "max": rs.max,
                }
            entries[impl] = entry
        workloads[result.id] = {
            "title": result.title,
            "unit": result.unit,
            "higher_is_better": result.higher_is_better,
            "description": result.description,
            "params": result.params,
            "results": entries,
            "skipped": result.skipped,
        }
    return {
        **meta,
        "baseline": BASELINE,
        "implementations": LABELS,
        "negotiated": negotiated_suites(results),
        "workloads": workloads,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_chart(path: Path, results: list[WorkloadResult]) -> str:
    """A PNG of every workload's ratios; returns a message saying what happened."""
    try:
        import matplotlib
    except ImportError:
        return f"matplotlib is not installed: no chart written to {path}"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    shown = [result for result in results if result.rounds.get(BASELINE)]
    if not shown:
        return "no workload has a baseline to compare with: no chart written"
    columns = min(3, len(shown))
    rows = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for index, result in enumerate(shown):
        ax = axes[index // columns][index % columns]
        names: list[str] = []
        medians: list[float] = []
        lows: list[float] = []
        highs: list[float] = []
        for impl in result.rounds:
            ratios = result.ratios(impl)
            assert ratios is not None
            rs = Summary.of(ratios)
            names.append(LABELS[impl])
            medians.append(rs.median)
            lows.append(rs.min)
            highs.append(rs.max)
        positions = list(range(len(names)))
        colours = ["tab:orange" if name == LABELS[BASELINE] else "tab:blue" for name in names]
        # Bars grow from 1.0 (the baseline) towards each ratio, on a log scale.
        widths = [median - 1.0 for median in medians]
        ax.barh(positions, widths, left=1.0, color=colours, height=0.6)
        errors = [
            [median - low for median, low in zip(medians, lows, strict=True)],
            [high - median for median, high in zip(medians, highs, strict=True)],
        ]
        ax.errorbar(medians, positions, xerr=errors, fmt="none", ecolor="black", capsize=3)
        for position, median in zip(positions, medians, strict=True):
            ax.annotate(
                f"{median:.3g}",
                (median, position),
                xytext=(4, 5),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_yticks(positions, names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        left, right = min(*lows, 1.0) / 1.6, max(*highs, 1.0) * 1.6
        ax.set_xlim(left, right)
        subs = (1.0,) if right / left > 100 else (1.0, 2.0, 5.0)
        ax.xaxis.set_major_locator(LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=8)
        better = "higher" if result.higher_is_better else "lower"
        ax.set_title(f"{result.id} ({result.unit}, {better} is better)", fontsize=9)
    for index in range(len(shown), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(
        f"ratio to {LABELS[BASELINE]}, log scale (median of per-round ratios, min-max bars)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"chart written to {path}"
