"""The study report as one self-contained HTML file (the embedding of :mod:`.html`: inline CSS,
PNG plots as base64 data URIs, no scripts, no network; written atomically)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from traceforge.analyze import study_plots
from traceforge.analyze.html import _img, _num, _p, _page, _table, _write
from traceforge.analyze.jsonable import jsonable
from traceforge.analyze.render import _pct
from traceforge.analyze.study_render import (
    METRIC_LABELS,
    capacity_interval,
    cell_lines,
    grid,
    level_name,
    section_models,
    sections,
    significance,
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f'<br><span class="muted">[{_num(ci[0])}, {_num(ci[1])}]</span>'


def _grid_tables(report: dict[str, Any], mix: str, source: str, levels: list[float]) -> str:
    axis = level_name(report, mix, source)
    out = []
    for model in section_models(report, mix, source):
        configs, cells = grid(report, mix, source, model, levels)
        rows = [[_e(config), *(_grid_cell(cells.get((config, level))) for level in levels)]
                for config in configs]
        out.append(f"<h3>{_e(model)}</h3>")
        out.append(_table(["config", *(f"{axis} {level:g}" for level in levels)], rows))
    return "\n".join(out)


def _grid_cell(m: dict[str, Any] | None) -> str:
    """cell_lines, plus the pooled p99 with its within-run bootstrap CI (muted)."""
    text = "<br>".join(_e(line) for line in cell_lines(m))
    pooled = (m or {}).get("pooled") or {}
    if pooled.get("p99_ms") is not None and pooled.get("p99_ci95_ms"):
        lo, hi = pooled["p99_ci95_ms"]
        text += (f'<br><span class="muted">pooled p99 {_num(pooled["p99_ms"])} '
                 f"[{_num(lo)}–{_num(hi)}] bootstrap</span>")
    return text


def _best_table(report: dict[str, Any], mix: str, source: str) -> str:
    rows = []
    for b in report["best"]:
        if b["mix"] != mix or b["source"] != source:
            continue
        p, verdict = significance(b["lead"], b.get("without_value"))
        runner = b["runner_up"] or {}
        cls = "ok" if b["lead"] and b["lead"]["significant"] else "muted"
        lead = b["lead"] or {}
        repeats = lead.get("repeats") or {}
        tests = ", ".join([f"{k.replace('_p', '')} p {_p(lead[k])}"
                           for k in ("ks_p", "poisson_p") if lead.get(k) is not None]
                          + ([f"{repeats['test']} p {_p(repeats['p'])}"] if repeats else []))
        rows.append([f"{b['level']:g}", _e(b["model"]), _e(METRIC_LABELS[b["metric"]]),
                     _e(b["config_label"]), _num(b["value"]) + _ci(b["ci95"]),
                     _e(runner.get("config_label", "–")), _num(runner.get("value")), p,
                     f'<span class="{cls}">{verdict}</span>'
                     + (f'<br><span class="muted">{_e(tests)}</span>' if tests else "")])
    if not rows:
        return ""
    return _table([level_name(report, mix, source), "model", "best", "config",
                   "mean [95 % CI]", "runner-up", "mean", "p", "lead"], rows)


def _curves(report: dict[str, Any], mix: str, source: str, levels: list[float]) -> bytes:
    models = section_models(report, mix, source)
    curves: dict[str, dict[str, list]] = {m: {} for m in models}
    for agg in report["aggregates"]:
        if agg["mix"] != mix or agg["source"] != source or agg["kind"] != "grid" \
                or agg["level"] not in levels:
            continue
        for model in models:
            curves[model].setdefault(agg["config_label"], []).append(
                (agg["level"], agg["models"].get(model)))
    axis = level_name(report, mix, source)
    return study_plots.load_curves(
        curves, models, title=f"{mix} ({source}): mean over repeats, 95 % intervals",
        xlabel="load (× offered rate)" if axis == "load" else "fraction of capacity")


def _capacity_html(report: dict[str, Any]) -> list[str]:
    entries = report["capacity_prescreen"] + report["capacity"]
    parts = [f"<h2>Capacity (SLO {_e(json.dumps(report.get('capacity_slo')))})</h2>",
             "<p class='muted'>capacity = the highest load multiplier that met the SLO; low met "
             "it, high did not (the search's final bracket).</p>",
             _table(["mix", "config", "search", "repeat", "capacity", "[low, high]",
                     "tolerance", "probes"],
                    [[_e(c["mix"]), _e(c["config_label"]), _e(c.get("kind") or "capacity"),
                      _e(c.get("repeat", "–")),
                      _num(c["load"], 3) if c["load"] is not None
                      else '<span class="bad">none met</span>',
                      _e(capacity_interval(c)), _num(c.get("tolerance"), 3),
                      str(len(c.get("probes") or []))] for c in entries])]
    summary = [s for s in report["capacity_summary"] if s["searches"] > 1]
    if summary:
        parts.append(_table(
            ["mix", "config", "search", "searches", "mean capacity [95 % t interval]",
             "widest [low, high]"],
            [[_e(s["mix"]), _e(s["config_label"]), _e(s["kind"]), str(s["searches"]),
              (_num(s["load"]["mean"], 3) + _ci(s["load"]["ci95"])) if s["load"]
              else "none met", _e(capacity_interval(s))] for s in summary]))
    for mix in dict.fromkeys(c["mix"] for c in entries):
        parts.append(_img(study_plots.capacity_bars(
            [s for s in report["capacity_summary"] if s["mix"] == mix],
            title=f"{mix}: capacity (mean over searches; whiskers: widest bracket)"),
            f"capacity {mix}"))
    return parts


def study_html(report: dict[str, Any]) -> str:
    """The study report page as a string (see :func:`write_study_html`)."""
    counts = report["counts"]
    by_status = ", ".join(f"{n} {_e(s)}" for s, n in sorted(counts["by_status"].items()))
    parts = [f"<h1>traceforge study report — {_e(report.get('name') or report['study_dir'])}"
             "</h1>",
             f"<p>{_e(report['study_dir'])}: {counts['cells']} cells ({by_status}); "
             f"{counts['usable']} in the numbers. Significance level {report['alpha']:g}.</p>",
             *(f'<p class="warn">{_e(n)}</p>' for n in report["notes"]),
             "<details><summary>How the numbers are computed</summary><ul>"
             + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in report["methods"].items())
             + "</ul></details>"]
    for mix, source, levels in sections(report):
        parts.append(f"<h2>Mix {_e(mix)} ({_e(source)})</h2>")
        parts.append(_img(_curves(report, mix, source, levels),
                          f"load curves {mix} {source}"))
        parts.append("<p class='muted'>Each cell: mean over repeats with its 95 % interval "
                     "(t across repeats; with one repeat, the within-run bootstrap); SLO "
                     "attainment · goodput; n = repeats; then the p99 of all repeats' requests "
                     "pooled, with its bootstrap CI (sampling noise within runs only).</p>")
        parts.append(_grid_tables(report, mix, source, levels))
        best = _best_table(report, mix, source)
        if best:
            parts += [f"<h3>Best configuration per {_e(level_name(report, mix, source))}</h3>",
                      best]
    if report["capacity"] or report["capacity_prescreen"]:
        parts += _capacity_html(report)
    if report["sim_vs_measured"]:
        parts.append("<h2>Simulated vs measured</h2>")
        parts.append("<p class='muted'>Means over repeats; ratio = measured / simulated; KS p "
                     "and verdict compare the pooled latencies (A = simulated, B = measured)."
                     "</p>")
        parts.append(_table(
            ["mix", "config", "load", "model", "p50 sim", "p50 meas", "ratio", "p99 sim",
             "p99 meas", "ratio", "SLO sim", "SLO meas", "KS p", "verdict"],
            [[_e(e["mix"]), _e(e["config_label"]), f"{e['load']:g}", _e(e["model"]),
              _num(e["simulated"]["p50_ms"]), _num(e["measured"]["p50_ms"]),
              _num(e["p50_ratio"], 3), _num(e["simulated"]["p99_ms"]),
              _num(e["measured"]["p99_ms"]), _num(e["p99_ratio"], 3),
              _pct(e["simulated"]["attainment"]), _pct(e["measured"]["attainment"]),
              _p(e["compare"]["ks_p"]), _e(e["compare"]["verdict"])]
             for e in report["sim_vs_measured"]]))
        parts.append(_img(study_plots.sim_vs_measured_scatter(report["sim_vs_measured"]),
                          "simulated vs measured"))
    if report["sim_vs_measured_capacity"]:
        parts.append("<h2>Capacity: simulated prescreen vs measured search</h2>")
        parts.append(_table(
            ["mix", "config", "repeat", "simulated", "measured", "measured / simulated"],
            [[_e(e["mix"]), _e(e["config_label"]), _e(e["repeat"]),
              f"{_num(e['simulated']['load'], 3)} {_e(capacity_interval(e['simulated']))}",
              f"{_num(e['measured']['load'], 3)} {_e(capacity_interval(e['measured']))}",
              _num(e["ratio"], 3)] for e in report["sim_vs_measured_capacity"]]))
    if report["incomplete"]:
        parts.append("<h2 class='bad'>Cells not in the numbers</h2>")
        parts.append(_table(["cell", "status", "reason"],
                            [[_e(c["name"]), f'<span class="bad">{_e(c["status"])}</span>',
                              _e(c["reason"])] for c in report["incomplete"]]))
    parts.append("<details><summary>study report JSON</summary>"
                 f"<pre>{html.escape(json.dumps(jsonable(report), indent=1))}</pre></details>")
    return _page(f"traceforge study report {report.get('name') or ''}", "\n".join(parts))


def write_study_html(report: dict[str, Any], path: Path | str) -> Path:
    """Write the self-contained study report page (``report`` from build_study_report)."""
    return _write(path, study_html(report))
