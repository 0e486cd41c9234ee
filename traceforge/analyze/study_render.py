"""Terminal rendering (rich) of a study report. Pure presentation: every number shown comes from
:func:`traceforge.analyze.study.build_study_report`; the HTML page shows the same tables."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from traceforge.analyze.render import _ci, _f, _p, _pct, table_console
from traceforge.analyze.study import ALL

METRIC_LABELS = {"p99_ms": "p99 ms ↓", "goodput_rps": "goodput/s ↑"}


def _load(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def level_name(report: dict[str, Any], mix: str, source: str) -> str:
    """The x axis of a mix's grid: ``load``, or ``capacity`` (fraction of each configuration's
    capacity) in a capacity-based study."""
    axes = {a["level_axis"] for a in report["aggregates"]
            if a["mix"] == mix and a["source"] == source and a["kind"] == "grid"}
    return axes.pop() if len(axes) == 1 and None not in axes else "load"


def sections(report: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(mix, source, levels shown) for every mix and source with grid cells, in study order."""
    seen: list[tuple[str, str]] = []
    for agg in report["aggregates"]:
        key = (agg["mix"], agg["source"])
        if agg["kind"] == "grid" and key not in seen:
            seen.append(key)
    return [(mix, source, report["levels"].get(f"{mix}/{source}", [])) for mix, source in seen]


def section_models(report: dict[str, Any], mix: str, source: str) -> list[str]:
    names = sorted({m for a in report["aggregates"] if a["mix"] == mix and a["source"] == source
                    and a["kind"] == "grid" for m in a["models"] if m != ALL})
    return [*names, ALL] if len(names) > 1 else names


def grid(report: dict[str, Any], mix: str, source: str, model: str, levels: list[float]
         ) -> tuple[list[str], dict[tuple[str, float], dict[str, Any]]]:
    """Configuration labels (in study order) and {(config_label, level): model aggregate}."""
    configs: list[str] = []
    cells: dict[tuple[str, float], dict[str, Any]] = {}
    for agg in report["aggregates"]:
        if agg["mix"] != mix or agg["source"] != source or agg["kind"] != "grid" \
                or agg["level"] not in levels:
            continue
        if agg["config_label"] not in configs:
            configs.append(agg["config_label"])
        if model in agg["models"]:
            cells[(agg["config_label"], agg["level"])] = agg["models"][model]
    return configs, cells


def cell_lines(m: dict[str, Any] | None) -> list[str]:
    """Three short lines: p50 [CI], p99 [CI], attainment · goodput (n = repeats)."""
    if m is None:
        return ["no complete cell"]

    def metric(key: str) -> str:
        s = m.get(key)
        if not s:
            return "–"
        return f"{_f(s['mean'])} [{_ci(s['ci95'])}]" if s.get("ci95") else _f(s["mean"])

    att, good = m.get("attainment"), m.get("goodput_rps")
    n = max((m[k]["n"] for k in ("p50_ms", "p99_ms", "attainment", "goodput_rps") if m.get(k)),
            default=None)
    return [f"p50 {metric('p50_ms')}", f"p99 {metric('p99_ms')}",
            f"SLO {_pct(att['mean']) if att else '–'} · {_f(good['mean'], 1) if good else '–'}/s"
            + (f" n={n}" if n else "")]


def significance(lead: dict[str, Any] | None, without_value: list[str] | None = None
                 ) -> tuple[str, str]:
    """(p-value text, verdict text) of a best configuration's lead; a lead that is not
    significant says which condition failed."""
    if lead is None:
        if without_value:
            return "–", f"no value for {', '.join(without_value)}"
        return "–", "only configuration"
    p = _p(lead.get("p_value"))
    if lead["significant"]:
        return p, "significant"
    return p, f"not significant ({lead['reason']})" if lead.get("reason") else "not significant"


def render_study(report: dict[str, Any], console: Console | None = None) -> None:
    """Print a study report: per mix the configs × loads grid, best configs, capacity, sim vs
    measured, and every cell that is not in the numbers."""
    console = console or table_console()
    counts = report["counts"]
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(counts["by_status"].items()))
    console.print(Text.from_markup(
        f"[bold]study {report.get('name') or ''}[/]  {report['study_dir']}\n"
        f"{counts['cells']} cells ({by_status}); {counts['usable']} in the numbers"
        + (f"; study status {report['status']}" if report.get("status") else "")),
        soft_wrap=True)
    for note in report["notes"]:
        console.print(Text(note, style="yellow"))
    console.print(Text("cells: mean over repeats [95 % CI: t across repeats; one repeat: "
                       "within-run bootstrap]; SLO = attainment · goodput", style="dim"))
    for mix, source, levels in sections(report):
        axis = level_name(report, mix, source)
        for model in section_models(report, mix, source):
            configs, cells = grid(report, mix, source, model, levels)
            table = Table(title=f"{mix} · {model} · {source} — latency ms", box=box.SIMPLE_HEAD,
                          title_justify="left", show_lines=True, pad_edge=False)
            table.add_column("config", no_wrap=True)
            for level in levels:
                table.add_column(f"{axis} {_load(level)}", justify="right")
            for config in configs:
                table.add_row(config, *("\n".join(cell_lines(cells.get((config, level))))
                                        for level in levels))
            console.print(table)
        best_table = best_rows(report, mix, source)
        if best_table is not None:
            console.print(best_table)
    if report["capacity"] or report["capacity_prescreen"]:
        console.print(capacity_table(report))
        summary = capacity_summary_table(report)
        if summary is not None:
            console.print(summary)
    if report["sim_vs_measured"]:
        console.print(sim_table(report))
    if report["sim_vs_measured_capacity"]:
        console.print(sim_capacity_table(report))
    if report["incomplete"]:
        table = Table(title="cells not in the numbers", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False, title_style="bold red")
        for col in ("cell", "status", "reason"):
            table.add_column(col, overflow="fold")
        for c in report["incomplete"]:
            table.add_row(c["name"], Text(c["status"], style="red"), c["reason"])
        console.print(table)
    console.print(Text(report["methods"]["best"], style="dim"))


def best_rows(report: dict[str, Any], mix: str, source: str) -> Table | None:
    rows = [b for b in report["best"] if b["mix"] == mix and b["source"] == source]
    if not rows:
        return None
    table = Table(title=f"{mix} · {source} — best configuration per {level_name(report, mix, source)}"
                        f" (alpha {report['alpha']:g}; p: larger of pooled and repeat tests)",
                  box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for col in (level_name(report, mix, source), "model", "best", "config", "mean [95 % CI]",
                "runner-up", "p", "lead"):
        # fold, never "…": on a narrow terminal a cut number is a wrong number
        table.add_column(col, justify="right" if col in ("mean [95 % CI]", "p") else "left",
                         overflow="fold")
    for b in rows:
        p, verdict = significance(b["lead"], b.get("without_value"))
        runner = b["runner_up"]
        style = "green" if b["lead"] and b["lead"]["significant"] else "dim"
        table.add_row(_load(b["level"]), b["model"], METRIC_LABELS[b["metric"]],
                      b["config_label"], f"{_f(b['value'])} [{_ci(b['ci95'])}]",
                      f"{runner['config_label']} {_f(runner['value'])}" if runner else "–",
                      p, Text(verdict, style=style))
    return table


def capacity_interval(c: dict[str, Any]) -> str:
    low, high = c.get("low"), c.get("high")
    if low is None and high is None:
        return "–"
    return f"[{_load(low)}, {_load(high) if high is not None else 'never failed'}]"


def capacity_table(report: dict[str, Any]) -> Table:
    slo = report.get("capacity_slo")
    table = Table(title=f"capacity: highest load meeting the SLO {slo or ''}; [low met, high "
                        "did not]", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("mix", "config", "search", "repeat", "capacity", "[low, high]", "probes"):
        table.add_column(col, justify="left" if col in ("mix", "config", "search") else "right",
                         no_wrap=col in ("config", "[low, high]"))
    for c in report["capacity_prescreen"] + report["capacity"]:
        table.add_row(c["mix"], c["config_label"], str(c.get("kind") or "capacity"),
                      str(c.get("repeat", "–")),
                      _load(c["load"]) if c["load"] is not None else Text("none met", "red"),
                      capacity_interval(c), str(len(c.get("probes") or [])))
    return table


def capacity_summary_table(report: dict[str, Any]) -> Table | None:
    rows = [s for s in report["capacity_summary"] if s["searches"] > 1]
    if not rows:
        return None
    table = Table(title="capacity over repeated searches: mean [95 % t interval]",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("mix", "config", "search", "searches", "capacity", "widest [low, high]"):
        table.add_column(col, justify="left" if col in ("mix", "config", "search") else "right")
    for s in rows:
        load = s["load"]
        table.add_row(s["mix"], s["config_label"], s["kind"], str(s["searches"]),
                      f"{_f(load['mean'], 3)} [{_ci(load['ci95'])}]" if load else "none met",
                      capacity_interval(s))
    return table


def sim_table(report: dict[str, Any]) -> Table:
    table = Table(title="simulated vs measured (means over repeats; ratio = measured / "
                        "simulated)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("mix", "config", "load", "model", "p50 sim", "p50 meas", "ratio", "p99 sim",
                "p99 meas", "ratio", "SLO sim", "SLO meas", "KS p"):
        table.add_column(col, justify="left" if col in ("mix", "config", "model") else "right")
    for e in report["sim_vs_measured"]:
        s, m = e["simulated"], e["measured"]
        table.add_row(e["mix"], e["config_label"], _load(e["load"]), e["model"],
                      _f(s["p50_ms"]), _f(m["p50_ms"]), _f(e["p50_ratio"], 3), _f(s["p99_ms"]),
                      _f(m["p99_ms"]), _f(e["p99_ratio"], 3), _pct(s["attainment"]),
                      _pct(m["attainment"]), _p(e["compare"]["ks_p"]))
    return table


def sim_capacity_table(report: dict[str, Any]) -> Table:
    table = Table(title="capacity: simulated prescreen vs measured search (ratio = measured / "
                        "simulated)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("mix", "config", "repeat", "simulated", "measured", "ratio"):
        table.add_column(col, justify="left" if col in ("mix", "config") else "right")
    for e in report["sim_vs_measured_capacity"]:
        table.add_row(e["mix"], e["config_label"], str(e["repeat"]),
                      f"{_load(e['simulated']['load'])} {capacity_interval(e['simulated'])}",
                      f"{_load(e['measured']['load'])} {capacity_interval(e['measured'])}",
                      _f(e["ratio"], 3))
    return table
