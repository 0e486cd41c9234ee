"""matplotlib figures for the study report (Agg canvas, PNG bytes; the style of
:mod:`traceforge.analyze.plots`). Every point drawn is a number of the study report dict:
means over repeats with their 95 % intervals as error bars and bands."""

from __future__ import annotations

from typing import Any

import numpy as np

from traceforge.analyze.plots import DPI, _empty, _figure, log_axis, model_colors, png

CURVE_METRICS = (("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"),
                 ("goodput_rps", "goodput (req/s within SLO)"))


def _series(points: list[tuple[float, dict[str, Any] | None]]) -> tuple[np.ndarray, ...]:
    """x, mean, lower, upper arrays (NaN where a load has no value or no interval)."""
    x, mean, lo, hi = [], [], [], []
    for load, s in points:
        x.append(load)
        if not s:
            mean.append(np.nan), lo.append(np.nan), hi.append(np.nan)
            continue
        mean.append(s["mean"])
        ci = s.get("ci95") or [np.nan, np.nan]
        lo.append(np.nan if ci[0] is None else ci[0])
        hi.append(np.nan if ci[1] is None else ci[1])
    return tuple(np.asarray(v, dtype=float) for v in (x, mean, lo, hi))


def load_curves(curves: dict[str, dict[str, list[tuple[float, dict[str, Any]]]]],
                models: list[str], *, title: str, xlabel: str = "load (× offered rate)"
                ) -> bytes:
    """``curves[model][config_label]`` = [(load, model aggregate)]; one row of p50, p99 and
    goodput against load per model, one line per configuration with 95 % error bars/bands."""
    configs = list(dict.fromkeys(c for per in curves.values() for c in per))
    colors = model_colors(configs)
    from matplotlib.figure import Figure

    rows = max(len(models), 1)
    height = 2.5 * rows + 0.6
    # Fixed margins instead of plots._figure's constrained layout: that layout pass costs about
    # a third of a 12-panel figure's drawing time, and these panels all look alike.
    fig = Figure(figsize=(10.0, height), dpi=DPI)
    axes = fig.subplots(rows, 3, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / height + 0.02,
                        top=1 - 0.62 / height, wspace=0.25, hspace=0.45)
    for r, model in enumerate(models):
        for c, (metric, label) in enumerate(CURVE_METRICS):
            ax = axes[r, c]
            drawn = []
            for config, points in curves.get(model, {}).items():
                x, mean, lo, hi = _series([(load, m.get(metric) if m else None)
                                           for load, m in points])
                if np.all(np.isnan(mean)):
                    continue
                color = colors[config]
                yerr = np.vstack([np.where(np.isnan(lo), 0, mean - lo),
                                  np.where(np.isnan(hi), 0, hi - mean)])
                ax.errorbar(x, mean, yerr=np.clip(yerr, 0, None), color=color, marker="o",
                            ms=3.5, lw=1.4, capsize=2.5, label=config)
                band = ~np.isnan(lo) & ~np.isnan(hi)
                if band.sum() >= 2:
                    ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.15, lw=0)
                drawn.append(mean)
            if not drawn:
                _empty(ax, "no data")
                continue
            if metric != "goodput_rps":
                values = np.concatenate(drawn)
                if np.nanmin(values) > 0:
                    ax.set_yscale("log")
                    log_axis(ax.yaxis, values)
                    # a t interval reaching 0 would stretch a log axis over decades of nothing:
                    # bars and bands are cut at a fifth of the lowest mean
                    ax.set_ylim(bottom=np.nanmin(values) / 5)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{model}: {label}", fontsize=9)
            if r == rows - 1:
                ax.set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return png(fig)


def capacity_bars(summary: list[dict[str, Any]], *, title: str) -> bytes:
    """One bar per configuration and search kind: the mean capacity over its searches, with the
    widest [low, high] bracket as whiskers (the study report's ``capacity_summary``)."""
    fig, (ax,) = _figure(height=3.2, width=max(6.5, 1.1 * len(summary) + 2.5))
    if not summary:
        _empty(ax, "no capacity search")
        return png(fig)
    labels = [s["config_label"] + ("" if s["kind"] == "capacity" else f" ({s['kind']})")
              for s in summary]
    colors = model_colors(labels)
    for i, s in enumerate(summary):
        if not s["load"]:
            ax.text(i, 0, "none met", ha="center", va="bottom", fontsize=8, color="#c62828")
            continue
        load = s["load"]["mean"]
        low = s["low"] if s["low"] is not None else load
        high = s["high"] if s["high"] is not None else load
        ax.bar(i, load, color=colors[labels[i]], width=0.6,
               hatch="//" if s["kind"] == "prescreen" else None)
        ax.errorbar(i, load, yerr=[[max(load - low, 0)], [max(high - load, 0)]], color="black",
                    capsize=5, lw=1.2)
        if s["high"] is None:
            ax.text(i, load, "never failed", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(summary)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("capacity (load multiplier)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return png(fig)


def sim_vs_measured_scatter(entries: list[dict[str, Any]]) -> bytes:
    """Measured against simulated p50 and p99 per (mix, config, load, model); y = x dashed."""
    fig, axes = _figure(height=3.4, width=9.0, cols=2)
    for ax, metric in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        pts = np.array([(e["simulated"][metric], e["measured"][metric]) for e in entries
                        if e["simulated"][metric] and e["measured"][metric]], dtype=float)
        if not pts.size:
            _empty(ax, "no pairs")
            continue
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color="#1f77b4")
        lo, hi = pts.min() * 0.8, pts.max() * 1.25
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        log_axis(ax.xaxis, pts[:, 0])
        log_axis(ax.yaxis, pts[:, 1])
        ax.set_xlabel(f"simulated {metric[:3]} (ms)")
        ax.set_ylabel(f"measured {metric[:3]} (ms)")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{metric[:3]}: measured vs simulated (y = x dashed)", fontsize=9)
    return png(fig)
