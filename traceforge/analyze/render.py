"""Terminal rendering (rich) of a report or a comparison dict. Pure presentation: every number
shown comes from :func:`build_report` / :func:`compare_runs`."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"{_f(ci[0])}–{_f(ci[1])}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def self_check_panel(report: dict[str, Any]) -> Panel:
    check = report.get("self_check") or {}
    lag = check.get("send_lag_us") or {}
    ratio = check.get("achieved_rate_ratio")
    lines = [
        f"send lag  p50 {_f(lag.get('p50'), 1)} µs   p99 {_f(lag.get('p99'), 1)} µs   "
        f"max {_f(lag.get('max'), 1)} µs",
        f"achieved / offered send rate  {_f(ratio, 4)}",
    ]
    text = Text("\n".join(lines))
    style = "green"
    limits_report = check.get("limits_this_report", check.get("generator_limited"))
    if limits_report:
        style = "bold red"
        text.append("\nTHE LOAD GENERATOR LIMITED THIS RUN: latencies include its own lag.",
                    style="bold red")
        if check.get("problems"):  # said once: the headline above, then why
            text.append(f"\n{'; '.join(check['problems'])}; {check.get('cause', '')}",
                        style="red")
        elif check.get("warning"):
            text.append(f"\n{check['warning']}", style="red")
    elif check.get("generator_limited"):
        style = "yellow"
        here = (check.get("from_timeline") or {}).get("send_lag_us") or {}
        text.append("\nThe generator lagged only in rows this report leaves out (warm-up); "
                    f"in the rows analysed, send lag p99 is {_f(here.get('p99'), 1)} µs.",
                    style="yellow")
    elif check.get("warning"):
        style = "yellow"
        text.append(f"\n{check['warning']}", style="yellow")
    source = check.get("source", "")
    return Panel(text, title=f"generator self-check ({source})", border_style=style,
                 expand=False)


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(report["models"].items())
    if len(rows) != 1:
        rows.append(("(all)", report["overall"]))
    return rows


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    return table


def requests_table(report: dict[str, Any]) -> Table:
    table = _table("requests (offered/s over the arrival window, ok/s including the drain)",
                   ("model", "reqs", "ok", "err", "t/o", "canc", "drop", "offered/s", "ok/s"))
    for name, s in _rows(report):
        def bad(key: str, s: dict = s) -> Text:
            return Text(_f(s[key]), style="red" if s[key] else "")

        over = (s.get("overload") or {}).get("overloaded")
        label = Text(name + (" OVERLOADED" if over else ""), style="bold red" if over else "")
        table.add_row(label, _f(s["count"]), _f(s["ok"]), bad("errors"), bad("timeouts"),
                      _f(s["cancelled"]), bad("dropped"), _f(s["offered_rps"], 1),
                      _f(s["throughput_rps"], 1))
    return table


def latency_table(report: dict[str, Any]) -> Table:
    table = _table("latency of ok requests (ms, done − scheduled)",
                   ("model", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"))
    for name, s in _rows(report):
        lat = s["latency_ms"]
        table.add_row(name, *(_f(lat[k]) for k in ("mean", "p50", "p90", "p95", "p99", "p999",
                                                   "max")))
    return table


def ci_table(report: dict[str, Any]) -> Table:
    table = _table("95 % bootstrap confidence intervals (ms; * = fewer than 10 requests beyond"
                   " the percentile, the interval is too narrow)",
                   ("model", "p50", "p90", "p99", "p99.9"))
    for name, s in _rows(report):
        ci, sparse = s["latency_ci95_ms"], s.get("latency_ci_sparse") or []
        table.add_row(name, *(_ci(ci[k]) + ("*" if k in sparse and ci[k] else "")
                              for k in ("p50", "p90", "p99", "p999")))
    return table


def decomposition_table(report: dict[str, Any]) -> Table:
    table = _table("time per stage (ms, means; tail = slowest 1 %)",
                   ("model", "over", "send", "queue", "service", "(GPU)", "other",
                    "total"))
    keys = ("send_lag", "queue_wait", "service", "gpu", "transport_other")
    for name, s in _rows(report):
        d, tail = s["decomposition_ms"], s.get("tail_decomposition_ms") or {}
        table.add_row(name, "all", *(_f(d[k]["mean"]) for k in keys),
                      _f(s["latency_ms"]["mean"]))
        if tail:
            table.add_row("", "tail 1 %", *(_f(tail.get(k)) for k in keys),
                          _f(tail.get("latency")), style="dim")
    return table


def generative_table(report: dict[str, Any]) -> Table | None:
    rows = [(n, s["generative"]) for n, s in _rows(report) if s.get("generative")]
    if not rows:
        return None
    table = _table("generative requests (ms)", ("model", "reqs", "TTFT p50", "p99", "TPOT p50",
                                                "p99", "ITL p50", "p99", "tok/s"))
    for name, g in rows:
        table.add_row(name, _f(g["count"]), _f(g["ttft_ms"]["p50"]), _f(g["ttft_ms"]["p99"]),
                      _f(g["tpot_ms"]["p50"]), _f(g["tpot_ms"]["p99"]), _f(g["itl_ms"]["p50"]),
                      _f(g["itl_ms"]["p99"]), _f(g["tokens_per_s"], 1))
    return table


def slo_table(report: dict[str, Any]) -> Table | None:
    rows = [(n, s["slo"]) for n, s in _rows(report) if s.get("slo")]
    if not rows:
        return None
    table = _table(f"SLO (from {report.get('slo_source')})",
                   ("model", "SLO ms", "attained", "eligible", "attainment", "goodput/s"))
    for name, slo in rows:
        attainment = slo["attainment"]
        style = "" if attainment is None or attainment >= 0.99 else (
            "yellow" if attainment >= 0.9 else "red")
        table.add_row(name, _f(slo["slo_ms"]) if slo["slo_ms"] else "per model",
                      _f(slo["attained"]), _f(slo["eligible"]),
                      Text(_pct(attainment), style=style), _f(slo["goodput_rps"], 1))
    return table


# Width of the tables when stdout is a pipe or a file and COLUMNS is not set: rich's 80
# columns cut the study's best-configuration table to "mode=ti…" and "[0.79–3…" (numbers lost
# from a report saved with `traceforge report DIR > report.txt`).
PIPE_WIDTH = 200


def table_console() -> Console:
    """A console for stdout: a terminal's own width; a pipe or file (COLUMNS unset)
    :data:`PIPE_WIDTH` columns."""
    import os

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def render_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print a report: self-check first, then latency, decomposition, generative and SLO."""
    console = console or table_console()
    run = report.get("run") or {}
    window = report["window"]
    header = (f"[bold]{report['run_dir']}[/]  backend {run.get('backend') or '?'}"
              + (f"  mode {run['mode']}" if run.get("mode") else "")
              + (f"  device {run['device']}" if run.get("device") else "")
              + f"  status {report['status']}")
    parts: list[Any] = [Text.from_markup(header), self_check_panel(report)]
    summary = (f"{window['rows_analysed']:,} of {window['rows_total']:,} requests over "
               f"{window['duration_s']:.2f} s")
    if window["excluded_warmup_flagged"] or window["excluded_warmup_trim"]:
        summary += (f" (warm-up excluded: {window['excluded_warmup_flagged']:,} flagged, "
                    f"{window['excluded_warmup_trim']:,} trimmed by --warmup)")
    parts.append(Text(summary))
    for note in report.get("notes") or []:
        parts.append(Text(note, style="yellow"))
    parts += [requests_table(report), latency_table(report), ci_table(report),
              decomposition_table(report)]
    for extra in (generative_table(report), slo_table(report), sessions_table(report),
                  server_metrics_table(report)):
        if extra is not None:
            parts.append(extra)
    console.print(Group(*parts))


def sessions_table(report: dict[str, Any]) -> Table | None:
    s = report.get("sessions")
    if not s:
        return None
    d = s["duration_s"]
    table = _table(f"sessions: {s['sessions']:,} ({s['complete']:,} complete, {s['stopped']:,} "
                   f"stopped by a failed turn); duration of complete ones p50 {_f(d['p50'])} s, "
                   f"p99 {_f(d['p99'])} s — per-turn latency (ms, think time excluded)",
                   ("turn", "rows", "ok", "mean", "p50", "p90", "p99", "max"))
    for k, t in s["turn_latency_ms"].items():
        table.add_row(k, _f(t["rows"]), _f(t["count"]), _f(t["mean"]), _f(t["p50"]),
                      _f(t["p90"]), _f(t["p99"]), _f(t["max"]))
    return table


def server_metrics_table(report: dict[str, Any]) -> Table | None:
    m = report.get("server_metrics")
    if not m:
        return None
    scrape = m.get("scrape") or {}
    table = _table(f"server metrics ({m['samples']:,} samples"
                   + (f", {scrape['warnings']} scrape warnings" if scrape.get("warnings") else "")
                   + ")", ("metric", "name", "mean", "max"))
    for key in ("running", "waiting", "cache_usage"):
        v = m.get(key)
        if v is not None:
            table.add_row(key, v["name"], _f(v["mean"], 3), _f(v["max"], 3))
    if m.get("prefix_cache_hit_rate") is not None:
        table.add_row("prefix cache hit rate", "hits / queries (tokens)",
                      _pct(m["prefix_cache_hit_rate"]), "")
    return table


def render_compare(result: dict[str, Any], console: Console | None = None) -> None:
    """Print a comparison: per (A, B) pair, a latency table and a significance table."""
    console = console or table_console()
    verdict_style = {"faster": "green", "slower": "red", "mixed": "yellow", "same": ""}
    for pair in result["comparisons"]:
        console.print(Text.from_markup(f"[bold]B[/] = {pair['b']}\n[bold]A[/] = {pair['a']}"),
                      soft_wrap=True)
        latency = _table("latency of ok requests (ms; ratios B/A)",
                         ("model", "n A", "n B", "p50 A", "p50 B", "B/A", "p99 A", "p99 B",
                          "B/A"))
        level = f"{100 * (1 - result['alpha']):g} %"
        tests = _table(f"significance (verdict at {100 * result['alpha']:g} %)",
                       ("model", "p99 B−A", f"{level} CI", "KS p", "MW p", "W1 ms", "verdict"))
        for name, m in pair["models"].items():
            ci = m.get("p99_diff_ci_ms")
            latency.add_row(name, _f(m["n_a"]), _f(m["n_b"]), _f(m["p50_a_ms"]),
                            _f(m["p50_b_ms"]), _f(m["p50_ratio"], 3), _f(m["p99_a_ms"]),
                            _f(m["p99_b_ms"]), _f(m["p99_ratio"], 3))
            tests.add_row(name, _f(m["p99_diff_ms"]), _ci(ci), _p(m["ks_p"]), _p(m["mw_p"]),
                          _f(m["wasserstein_ms"], 3),
                          Text(m["verdict"], style=verdict_style.get(m["verdict"], "")))
        console.print(latency)
        console.print(tests)
        for warning in pair.get("warnings") or []:
            console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
        if pair["only_in_a"] or pair["only_in_b"]:
            console.print(Text(f"not compared — only in A: {', '.join(pair['only_in_a']) or '–'};"
                               f" only in B: {', '.join(pair['only_in_b']) or '–'}",
                               style="yellow"))
    console.print(Text(result["rule"], style="dim"))


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
