"""One self-contained HTML file per report or comparison: inline CSS, PNG plots as base64 data
URIs, no scripts, no network. Written atomically (a crash never leaves half a file)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.analyze import plots
from traceforge.analyze.jsonable import jsonable
from traceforge.analyze.report import analysis_rows
from traceforge.analyze.rundata import RunData, load_run
from traceforge.schema import atomic_write

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1000px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { padding: 3px 9px; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.ok { color: #1a7f37; } .bad { color: #c62828; font-weight: bold; } .warn { color: #a15c00; }
.box { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; display: inline-block; }
.box.bad { border-color: #c62828; background: #fdecea; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.muted { color: #777; font-size: 0.85em; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _groups(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(report["models"].items())
    if len(rows) != 1:
        rows.append(("(all)", report["overall"]))
    return rows


def _self_check_html(report: dict[str, Any]) -> str:
    check = report.get("self_check") or {}
    lag = check.get("send_lag_us") or {}
    limited = bool(check.get("limits_this_report", check.get("generator_limited")))
    lines = [f"send lag p50 {_num(lag.get('p50'), 1)} µs, p99 {_num(lag.get('p99'), 1)} µs, "
             f"max {_num(lag.get('max'), 1)} µs",
             f"achieved / offered send rate {_num(check.get('achieved_rate_ratio'), 4)}"]
    if limited:
        lines.append('<span class="bad">The load generator limited this run: latencies include '
                     "its own lag.</span>")
        if check.get("warning"):
            lines.append(f'<span class="bad">{html.escape(str(check["warning"]))}</span>')
    elif check.get("generator_limited"):
        here = (check.get("from_timeline") or {}).get("send_lag_us") or {}
        lines.append('<span class="warn">The generator lagged only in rows this report leaves '
                     "out (warm-up); in the rows analysed, send lag p99 is "
                     f"{_num(here.get('p99'), 1)} µs.</span>")
    elif check.get("warning"):
        lines.append(f'<span class="warn">{html.escape(str(check["warning"]))}</span>')
    cls = "box bad" if limited else "box"
    return (f'<div class="{cls}"><b>Generator self-check</b> '
            f'<span class="muted">({html.escape(str(check.get("source", "")))})</span><br>'
            + "<br>".join(lines) + "</div>")


def _report_tables(report: dict[str, Any]) -> str:
    out = []
    rows = []
    for name, s in _groups(report):
        rows.append([html.escape(name), _num(s["count"]), _num(s["ok"]), _num(s["errors"]),
                     _num(s["timeouts"]), _num(s["cancelled"]), _num(s["dropped"]),
                     _num(s["offered_rps"], 1), _num(s["throughput_rps"], 1)])
    out.append(_table(["model", "requests", "ok", "error", "timeout", "cancelled", "dropped",
                       "offered req/s", "ok req/s"], rows))
    rows = []
    for name, s in _groups(report):
        lat, ci = s["latency_ms"], s["latency_ci95_ms"]

        sparse = s.get("latency_ci_sparse") or []

        def cell(key: str, lat: dict = lat, ci: dict = ci, sparse: list = sparse) -> str:
            interval = ci.get(key)
            mark = "*" if key in sparse else ""
            extra = (f'<br><span class="muted">{_num(interval[0])}–{_num(interval[1])}{mark}'
                     "</span>" if interval else "")
            return _num(lat[key]) + extra

        rows.append([html.escape(name), _num(lat["mean"]), *(cell(k) for k in
                                                            ("p50", "p90", "p95", "p99", "p999")),
                     _num(lat["max"])])
    out.append("<p class='muted'>Latency of ok requests in ms (done − scheduled), with 95 % "
               "bootstrap confidence intervals below each percentile (* fewer than 10 requests "
               "lie beyond it, so the interval is too narrow).</p>")
    out.append(_table(["model", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"], rows))
    rows = []
    for name, s in _groups(report):
        d, tail = s["decomposition_ms"], s.get("tail_decomposition_ms") or {}
        keys = ("send_lag", "queue_wait", "service", "gpu", "transport_other")
        rows.append([html.escape(name), "all", *(_num(d[k]["mean"]) for k in keys),
                     _num(s["latency_ms"]["mean"])])
        if tail:
            rows.append(["", "slowest 1 %", *(_num(tail.get(k)) for k in keys),
                         _num(tail.get("latency"))])
    out.append(_table(["model", "over", "send lag", "queue wait", "service", "(of it GPU)",
                       "transport/other", "= latency"], rows))
    gen = [(n, s["generative"]) for n, s in _groups(report) if s.get("generative")]
    if gen:
        out.append(_table(
            ["model", "requests", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50",
             "ITL p99", "tokens/s"],
            [[html.escape(n), _num(g["count"]), _num(g["ttft_ms"]["p50"]),
              _num(g["ttft_ms"]["p99"]), _num(g["tpot_ms"]["p50"]), _num(g["tpot_ms"]["p99"]),
              _num(g["itl_ms"]["p50"]), _num(g["itl_ms"]["p99"]), _num(g["tokens_per_s"], 1)]
             for n, g in gen]))
    slo = [(n, s["slo"]) for n, s in _groups(report) if s.get("slo")]
    if slo:
        out.append(f"<p class='muted'>SLOs from {html.escape(str(report.get('slo_source')))}."
                   "</p>")
        out.append(_table(
            ["model", "SLO ms", "attained", "eligible", "attainment", "goodput req/s"],
            [[html.escape(n), _num(v["slo_ms"]) if v["slo_ms"] else "per model",
              _num(v["attained"]), _num(v["eligible"]),
              "–" if v["attainment"] is None else f"{100 * v['attainment']:.2f} %",
              _num(v["goodput_rps"], 1)] for n, v in slo]))
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _write(path: Path | str, text: str) -> Path:
    path = Path(path)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)  # a report is meant to be shared; mkstemp would leave it 0600

    atomic_write(path, write)
    return path


def report_html(run: RunData, report: dict[str, Any]) -> str:
    """The report page as a string (see :func:`write_html`)."""
    window = report["window"]
    rows, _ = analysis_rows(run, warmup_s=window["warmup_s"] or None,
                            include_warmup_rows=window["include_warmup_rows"])
    colors = plots.model_colors(run.models)
    latency = run.latency
    groups = {name: np.sort(latency[rows & run.ok & (run.model_code == code)])
              for code, name in enumerate(run.models)}
    slos = {name: s["slo"]["slo_ms"] for name, s in report["models"].items() if s.get("slo")}
    status = report["status"]
    status_html = (f'<span class="{"ok" if status == "complete" else "bad"}">'
                   f"{html.escape(status)}</span>")
    meta = report.get("run") or {}
    parts = [
        f"<h1>traceforge report — {html.escape(report['run_dir'])}</h1>",
        f"<p>backend <b>{html.escape(str(meta.get('backend')))}</b>"
        + (f", mode <b>{html.escape(str(meta['mode']))}</b>" if meta.get("mode") else "")
        + (f", device <b>{html.escape(str(meta['device']))}</b>" if meta.get("device") else "")
        + f", status {status_html}; {window['rows_analysed']:,} of {window['rows_total']:,} "
        f"requests over {window['duration_s']:.2f} s"
        + (f" (warm-up excluded: {window['excluded_warmup_flagged']:,} flagged, "
           f"{window['excluded_warmup_trim']:,} trimmed)"
           if window["excluded_warmup_flagged"] or window["excluded_warmup_trim"] else "")
        + "</p>",
        _self_check_html(report),
        *(f'<p class="warn">{html.escape(n)}</p>' for n in report.get("notes") or []),
        "<h2>Summary</h2>", _report_tables(report),
        "<h2>Latency distribution</h2>", _img(plots.latency_cdf(groups, colors), "latency CDF"),
        "<h2>Latency over time</h2>",
        _img(plots.latency_over_time(run, rows, colors), "latency over time"),
        *_server_and_sessions(run, report),
        "<h2>Where the time went</h2>",
        _img(plots.decomposition_bars(report), "stacked decomposition"),
        "<h2>Throughput and goodput</h2>",
        _img(plots.throughput_over_time(run, rows, slos), "throughput over time"),
        "<h2>In flight and queued</h2>", _img(plots.depth_over_time(run, rows), "queue depth"),
    ]
    telemetry = plots.telemetry_lanes(run.telemetry)
    if telemetry is not None:
        parts += ["<h2>GPU telemetry</h2>", _img(telemetry, "GPU telemetry")]
    parts += [
        "<h2>Run manifest (run.json)</h2>",
        f"<pre>{html.escape(json.dumps(run.manifest, indent=2, sort_keys=True, default=str))}"
        "</pre>",
        "<details><summary>report JSON</summary>"
        f"<pre>{html.escape(json.dumps(jsonable(report), indent=1))}</pre></details>",
    ]
    return _page(f"traceforge report {report['run_dir']}", "\n".join(parts))


def _server_and_sessions(run: RunData, report: dict[str, Any]) -> list[str]:
    """Server metrics (--scrape) under the latency plot, then the sessions table, if any."""
    out = []
    lanes = plots.server_metrics_lanes(run)
    if lanes is not None:
        out.append(_img(lanes, "server running/waiting requests and KV-cache usage"))
    m = report.get("server_metrics")
    if m and m.get("prefix_cache_hit_rate") is not None:
        out.append(f"<p>server prefix-cache hit rate over the run: "
                   f"{100 * m['prefix_cache_hit_rate']:.2f} % "
                   f"({m['prefix_cache_hits']:,.0f} of {m['prefix_cache_queries']:,.0f} "
                   "prompt tokens)</p>")
    s = report.get("sessions")
    if s:
        d = s["duration_s"]
        out += ["<h2>Sessions</h2>",
                f"<p>{s['sessions']:,} sessions: {s['complete']:,} complete, {s['stopped']:,} "
                f"stopped by a failed turn; duration of complete sessions p50 {_num(d['p50'])} "
                f"s, p99 {_num(d['p99'])} s (first send to last answer, think time included)."
                " Per-turn latency (ms) excludes think time.</p>",
                _table(["turn", "rows", "ok", "mean", "p50", "p90", "p99", "max"],
                       [[k, t["rows"], t["count"], _num(t["mean"]), _num(t["p50"]),
                         _num(t["p90"]), _num(t["p99"]), _num(t["max"])]
                        for k, t in s["turn_latency_ms"].items()])]
    return out


def write_html(run_dir: Path | str, report: dict[str, Any], path: Path | str, *,
               run: RunData | None = None) -> Path:
    """Write the self-contained HTML report for ``run_dir`` (``report`` from build_report)."""
    run = run if run is not None else load_run(run_dir)
    return _write(path, report_html(run, report))


def write_compare_html(result: dict[str, Any], path: Path | str, *,
                       warmup_s: float | None = None,
                       latencies: list[dict[str, np.ndarray]] | None = None) -> Path:
    """Comparison tables and per-model CDF overlays of every run (the first is the baseline);
    ``latencies`` as given to :func:`~traceforge.analyze.compare.compare_runs`."""
    from traceforge.analyze.compare import ok_latencies_by_model

    runs = latencies if latencies is not None else [
        ok_latencies_by_model(d, warmup_s=warmup_s) for d in result["runs"]]
    labels = [f"{i}: {Path(d).name or d}" for i, d in enumerate(result["runs"])]
    colors = plots.model_colors(labels)
    parts = [f"<h1>traceforge compare — baseline {html.escape(result['baseline'])}</h1>",
             f"<p class='muted'>{html.escape(result['rule'])}</p>"]
    for pair in result["comparisons"]:
        parts.append(f"<h2>B = {html.escape(pair['b'])} vs A = {html.escape(pair['a'])}</h2>")
        rows = []
        for name, m in pair["models"].items():
            ci = m.get("p99_diff_ci_ms")
            verdict_cls = {"faster": "ok", "slower": "bad"}.get(m["verdict"], "")
            rows.append([html.escape(name), _num(m["n_a"]), _num(m["n_b"]), _num(m["p50_a_ms"]),
                         _num(m["p50_b_ms"]), _num(m["p50_ratio"], 3), _num(m["p99_a_ms"]),
                         _num(m["p99_b_ms"]), _num(m["p99_ratio"], 3),
                         f"{_num(m['p99_diff_ms'])} [{_num(ci[0])}, {_num(ci[1])}]" if ci else "–",
                         _p(m["ks_p"]), _p(m["mw_p"]), _num(m["wasserstein_ms"], 3),
                         f'<span class="{verdict_cls}">{m["verdict"]}</span>'])
        parts.append(_table(["model", "n A", "n B", "p50 A", "p50 B", "p50 B/A", "p99 A",
                             "p99 B", "p99 B/A", "p99 B−A [CI]", "KS p", "MW p", "W1 ms",
                             "verdict"], rows))
        if pair["only_in_a"] or pair["only_in_b"]:
            parts.append(f"<p class='warn'>Not compared — only in A: "
                         f"{html.escape(', '.join(pair['only_in_a']) or '–')}; only in B: "
                         f"{html.escape(', '.join(pair['only_in_b']) or '–')}</p>")
    models = sorted(set().union(*(set(r) for r in runs)))
    parts.append("<h2>CDF overlays</h2>")
    for model in models:
        groups = {label: run.get(model, np.empty(0)) for label, run in zip(labels, runs,
                                                                           strict=True)}
        parts.append(_img(plots.latency_cdf(groups, colors, title=f"{model}: latency CDF"),
                          f"CDF overlay {model}"))
    parts.append("<details><summary>comparison JSON</summary>"
                 f"<pre>{html.escape(json.dumps(jsonable(result), indent=1))}</pre></details>")
    return _write(path, _page("traceforge compare", "\n".join(parts)))


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
