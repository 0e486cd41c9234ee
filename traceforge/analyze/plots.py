"""matplotlib figures for the HTML report, drawn with the Agg canvas (no pyplot global state).

Each function takes a :class:`RunData` (plus the report where it needs SLOs) and returns PNG
bytes. Plots draw summaries, never a million markers: CDFs on a quantile grid, scatter on a
fixed-seed sample of at most ``SCATTER_POINTS`` requests, time series on bins.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from traceforge.analyze.rundata import NS_PER_MS, NS_PER_S, RunData

SCATTER_POINTS = 20_000
CDF_POINTS = 1_500
DPI = 96
STAGE_COLORS = {"send_lag": "#8c8c8c", "queue_wait": "#e6a23c", "service": "#4c78a8",
                "transport_other": "#b279a2"}
STAGE_LABELS = {"send_lag": "send lag", "queue_wait": "queue wait", "service": "service",
                "transport_other": "transport/other"}


def model_colors(models: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def _figure(height: float = 3.6, width: float = 9.0, rows: int = 1, cols: int = 1,
            sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel()
    return fig, axes


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def log_axis(axis, values: np.ndarray) -> None:
    """Log scale with plain-number labels (1, 2, 5 per decade when the data spans few decades;
    matplotlib's default labels minor ticks as overlapping 3×10^0-style text there)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    finite = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(finite.max() / finite.min()) if finite.size else 1.0
    subs = (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    axis.set_minor_locator(NullLocator())  # minor ticks cost ~40 % of the figure's draw time


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def cdf_points(sorted_x: np.ndarray, points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) on a grid dense in the tail: a CDF of 1M values drawn with ~points vertices."""
    n = sorted_x.size
    if n <= points:
        idx = np.arange(n)
    else:
        body = np.linspace(0, n - 1, points // 2)
        tail = n - 1 - np.geomspace(1, n - 1, points // 2)  # log-spaced towards the maximum
        idx = np.unique(np.concatenate([body, tail]).astype(np.int64))
    return sorted_x[idx], (idx + 1) / n


def latency_cdf(groups: dict[str, np.ndarray], colors: dict[str, Any], *,
                title: str = "latency CDF (ok requests)", styles: dict[str, str] | None = None
                ) -> bytes:
    """CDF (log x) and tail 1 − CDF (log-log) of sorted latencies in ns, one line per group."""
    fig, (ax_cdf, ax_tail) = _figure(height=3.4, cols=2)
    drawn = False
    for label, sorted_ns in groups.items():
        if sorted_ns.size == 0:
            continue
        x, f = cdf_points(sorted_ns / NS_PER_MS)
        style = (styles or {}).get(label, "-")
        ax_cdf.plot(x, f, style, color=colors[label], label=label, lw=1.4)
        tail = 1.0 - f + 1.0 / sorted_ns.size  # keeps the last point on a log axis
        ax_tail.plot(x, tail, style, color=colors[label], label=label, lw=1.4)
        drawn = True
    if not drawn:
        _empty(ax_cdf, "no ok requests")
        _empty(ax_tail, "no ok requests")
        return png(fig)
    every = np.concatenate([g for g in groups.values() if g.size]) / NS_PER_MS
    for ax in (ax_cdf, ax_tail):
        ax.set_xscale("log")
        log_axis(ax.xaxis, every)
        ax.set_xlabel("latency (ms, log)")
        ax.grid(True, which="major", alpha=0.3)
    ax_cdf.set_ylabel("fraction ≤ x")
    ax_cdf.set_title(title, fontsize=10)
    from matplotlib.ticker import NullLocator

    ax_tail.set_yscale("log")
    ax_tail.yaxis.set_minor_locator(NullLocator())
    ax_tail.set_ylabel("fraction ≥ x (log)")
    ax_tail.set_title("tail", fontsize=10)
    for q in (0.99, 0.999):
        ax_tail.axhline(1 - q, color="0.6", lw=0.8, ls=":")
    ax_cdf.legend(fontsize=8, loc="lower right")
    return png(fig)


def time_bins(run: RunData, rows: np.ndarray, *, bins: int = 100,
              min_width_s: float = 0.25) -> np.ndarray:
    """Bin edges (ns) from the first scheduled request to the last completion: at most ``bins``
    bins, at least ``min_width_s`` wide; the last bin is cut at the end (divide counts by
    ``np.diff``)."""
    scheduled = run.col("scheduled_ns")[rows]
    done = run.col("done_ns")[rows]
    if scheduled.size == 0:
        return np.array([0.0, NS_PER_S])
    start = float(scheduled.min())
    end = float(max(np.nanmax(done) if np.any(~np.isnan(done)) else start, scheduled.max()))
    width = max((end - start) / bins, min_width_s * NS_PER_S, 1.0)
    edges = start + width * np.arange(int(np.floor((end - start) / width)) + 1)
    return edges if edges[-1] >= end else np.append(edges, end + 1.0)


def latency_over_time(run: RunData, rows: np.ndarray, colors: dict[str, Any]) -> bytes:
    """Sampled latency scatter (log y) by scheduled time, per-bin p99, offered rate overlaid."""
    fig, (ax,) = _figure(height=3.8)
    ok_rows = np.flatnonzero(rows & run.ok)
    if ok_rows.size == 0:
        _empty(ax, "no ok requests")
        return png(fig)
    if ok_rows.size > SCATTER_POINTS:
        ok_rows = np.sort(np.random.default_rng(0).choice(ok_rows, SCATTER_POINTS,
                                                          replace=False))
    t = run.col("scheduled_ns")[ok_rows] / NS_PER_S
    latency_ms = run.latency[ok_rows] / NS_PER_MS
    codes = run.model_code[ok_rows]
    for code, name in enumerate(run.models):
        pick = codes == code
        if np.any(pick):
            ax.scatter(t[pick], latency_ms[pick], s=3, alpha=0.35, color=colors[name],
                       label=name, linewidths=0, rasterized=True)
    all_ok = rows & run.ok
    n_ok = int(np.count_nonzero(all_ok))
    # Coarser bins for the quantile line: ~100 requests per bin, so a p99 means something.
    edges = time_bins(run, rows, bins=int(np.clip(n_ok // 100, 4, 100)), min_width_s=0.0)
    bin_of = np.digitize(run.col("scheduled_ns")[all_ok], edges) - 1
    lat = run.latency[all_ok]
    order = np.argsort(bin_of, kind="stable")
    bins_sorted, lat_sorted = bin_of[order], lat[order]
    starts = np.searchsorted(bins_sorted, np.arange(len(edges)))
    p99 = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):  # <= 100 bins: a loop over bins, not over requests
        chunk = lat_sorted[starts[b]:starts[b + 1]]
        if chunk.size >= 20:
            p99[b] = np.percentile(chunk, 99) / NS_PER_MS
    centers = (edges[:-1] + edges[1:]) / 2 / NS_PER_S
    ax.plot(centers, p99, color="black", lw=1.2, marker=".", ms=3, label="p99 per bin")
    edges = time_bins(run, rows)
    ax.set_yscale("log")
    log_axis(ax.yaxis, latency_ms)
    ax.set_xlabel("scheduled time (s since run start)")
    ax.set_ylabel("latency (ms, log)")
    ax.grid(True, which="major", alpha=0.3)
    rate_ax = ax.twinx()
    offered, _ = np.histogram(run.col("scheduled_ns")[rows], edges)
    width_s = np.diff(edges) / NS_PER_S
    rate_ax.step(edges[:-1] / NS_PER_S, offered / width_s, where="post", color="tab:red",
                 lw=1.0, alpha=0.8, label="offered req/s")
    rate_ax.set_ylabel("offered rate (req/s)", color="tab:red")
    rate_ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = rate_ax.get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, fontsize=8, loc="outside lower center",
               markerscale=3, ncols=min(6, len(labels) + 1), frameon=False)
    ax.set_title("latency over time (sample of ok requests) with the offered rate", fontsize=10)
    return png(fig)


def decomposition_bars(report: dict[str, Any]) -> bytes:
    """Stacked mean time per stage, per model, for all ok requests and for the slowest 1 %."""
    groups = list(report["models"].items())
    fig, (ax,) = _figure(height=max(2.2, 0.55 * 2 * len(groups) + 1.2))
    labels, lefts = [], []
    y = 0
    for name, stats in groups:
        for tag, source in (("all", stats["decomposition_ms"]),
                            ("tail 1 %", stats.get("tail_decomposition_ms") or {})):
            left = 0.0
            for stage, color in STAGE_COLORS.items():
                value = source.get(stage)
                value = value.get("mean") if isinstance(value, dict) else value
                value = value or 0.0
                ax.barh(y, value, left=left, color=color,
                        label=STAGE_LABELS[stage] if y == 0 else None)
                left += value
            labels.append(f"{name} ({tag})")
            lefts.append(left)
            y += 1
    if not labels:
        _empty(ax, "no requests")
        return png(fig)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean time (ms); the stages add up to the mean latency")
    fig.legend(fontsize=8, loc="outside lower center", ncols=4, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("where the time went", fontsize=10)
    return png(fig)


def throughput_over_time(run: RunData, rows: np.ndarray, slos: dict[str, float]) -> bytes:
    """Offered, completed-ok and goodput (ok within SLO) rates per time bin."""
    fig, (ax,) = _figure(height=3.2)
    edges = time_bins(run, rows)
    width_s = np.diff(edges) / NS_PER_S
    t = edges[:-1] / NS_PER_S
    offered, _ = np.histogram(run.col("scheduled_ns")[rows], edges)
    ok_rows = rows & run.ok
    done, _ = np.histogram(run.col("done_ns")[ok_rows], edges)
    ax.step(t, offered / width_s, where="post", color="tab:red", lw=1, label="offered")
    ax.step(t, done / width_s, where="post", color="tab:blue", lw=1.4, label="completed ok")
    if slos:
        limit = np.full(run.n, np.inf)
        for code, name in enumerate(run.models):
            if name in slos:
                limit[run.model_code == code] = slos[name] * NS_PER_MS
        has_slo = np.isfinite(limit)
        good = ok_rows & has_slo & (run.latency <= limit)
        goodput, _ = np.histogram(run.col("done_ns")[good], edges)
        ax.step(t, goodput / width_s, where="post", color="tab:green", lw=1.4,
                label="goodput (ok within SLO, models with an SLO)")
    ax.set_xlabel("time (s since run start)")
    ax.set_ylabel(f"req/s ({width_s[0]:.3g} s bins)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.85)
    ax.set_title("throughput and goodput over time", fontsize=10)
    return png(fig)


def depth_over_time(run: RunData, rows: np.ndarray, points: int = 2000) -> bytes:
    """Requests in flight (sent, not done) and queued (sent, service not started) over time."""
    fig, (ax,) = _figure(height=3.0)
    sent = run.col("sent_ns")[rows]
    sent = np.sort(sent[~np.isnan(sent)])
    if sent.size == 0:
        _empty(ax, "no requests were sent")
        return png(fig)
    done = run.col("done_ns")[rows]
    done = np.sort(done[~np.isnan(done)])
    edges = time_bins(run, rows)
    grid = np.linspace(edges[0], edges[-1], points)
    in_flight = np.searchsorted(sent, grid, "right") - np.searchsorted(done, grid, "right")
    ax.plot(grid / NS_PER_S, in_flight, color="tab:purple", lw=0.8, label="in flight")
    start = run.col("service_start_ns")[rows]
    known = ~np.isnan(start)
    if np.any(known):
        sent_known = np.sort(run.col("sent_ns")[rows][known])
        queued = (np.searchsorted(sent_known, grid, "right")
                  - np.searchsorted(np.sort(start[known]), grid, "right"))
        ax.plot(grid / NS_PER_S, queued, color="tab:orange", lw=0.8,
                label="queued (sent, service not started)")
    ax.set_xlabel("time (s since run start)")
    ax.set_ylabel("requests")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("in-flight and queue depth", fontsize=10)
    return png(fig)


TELEMETRY_LANES = (("util_gpu_pct", "GPU util %"), ("util_mem_pct", "mem util %"),
                   ("mem_used_bytes", "mem used GiB"), ("sm_clock_mhz", "SM MHz"),
                   ("power_w", "power W"))


def telemetry_lanes(telemetry) -> bytes | None:
    """One lane per NVML quantity, a line per GPU (telemetry.parquet schema in INTERFACES.md)."""
    if telemetry is None or telemetry.num_rows == 0:
        return None
    lanes = [(c, label) for c, label in TELEMETRY_LANES if c in telemetry.column_names]
    if not lanes or "t_ns" not in telemetry.column_names:
        return None
    fig, axes = _figure(height=1.3 * len(lanes) + 0.8, rows=len(lanes), sharex=True)
    t = telemetry.column("t_ns").to_numpy() / NS_PER_S
    gpus = (telemetry.column("gpu_index").to_numpy() if "gpu_index" in telemetry.column_names
            else np.zeros(len(t), dtype=int))
    for ax, (column, label) in zip(axes, lanes, strict=True):
        values = telemetry.column(column).to_numpy(zero_copy_only=False).astype(float)
        if column == "mem_used_bytes":
            values = values / 2**30
        for gpu in np.unique(gpus):
            pick = gpus == gpu
            order = np.argsort(t[pick])
            ax.plot(t[pick][order], values[pick][order], lw=1, label=f"GPU {gpu}")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set_title("GPU telemetry (NVML)", fontsize=10)
    axes[-1].set_xlabel("time (s since run start)")
    return png(fig)


def server_metrics_lanes(run: RunData) -> bytes | None:
    """The server's own view (``--scrape``): running and waiting requests in one lane, KV-cache
    usage in another, on the run clock (same x axis as latency over time)."""
    from traceforge.replay.scrape import (
        CACHE_USAGE,
        RUNNING,
        WAITING,
        read_server_metrics,
        series,
    )

    table = read_server_metrics(run.run_dir)
    if table is None or table.num_rows == 0:
        return None
    queue = [(label, s) for label, names in (("running", RUNNING), ("waiting", WAITING))
             if (s := series(table, names)) is not None]
    cache = series(table, CACHE_USAGE)
    lanes = int(bool(queue)) + int(cache is not None)
    if lanes == 0:
        return None
    fig, axes = _figure(height=1.5 * lanes + 0.8, rows=lanes, sharex=True)
    axes = list(np.atleast_1d(axes))
    if queue:
        ax = axes.pop(0)
        for label, (t, v) in queue:
            ax.step(t / NS_PER_S, v, where="post", lw=1, label=label)
        ax.set_ylabel("requests", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(True, alpha=0.3)
        ax.set_title("server metrics (scraped)", fontsize=10)
    if cache is not None:
        ax = axes.pop(0)
        ax.step(cache[0] / NS_PER_S, 100 * cache[1], where="post", lw=1, color="tab:purple")
        ax.set_ylabel("KV cache %", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    fig.axes[-1].set_xlabel("time (s since run start)")
    return png(fig)
