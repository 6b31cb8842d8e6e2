"""The result file's targets and the markdown tables printed to the terminal and put in the README."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from bench import dask_overhead, kernels, kubernetes, memory, orchestration, parse_time, speedup, task_start
from bench.common import BENCH_DIR

README = BENCH_DIR / "README.md"
README_START = "<!-- latest-results:start -->"
README_END = "<!-- latest-results:end -->"

RUNTIME_LIMIT_S = {"full": 600, "quick": 120}

# section name -> (targets, figures) of its module
SECTIONS: dict[str, tuple[Callable | None, Callable | None]] = {
    "speedup": (speedup.targets, speedup.figures),
    "orchestration": (None, orchestration.figures),
    "parse": (parse_time.targets, parse_time.figures),
    "task_start": (task_start.targets, task_start.figures),
    "dask": (dask_overhead.targets, dask_overhead.figures),
    "kernels": (None, kernels.figures),
    "kubernetes": (kubernetes.targets, kubernetes.figures),
    "memory": (memory.targets, None),
}


def collect_targets(results: dict) -> list[dict]:
    sections = results["sections"]
    rows: list[dict] = []
    for name, (targets, _) in SECTIONS.items():
        section = sections.get(name) or {}
        if section.get("status") != "ok":
            continue
        if name == "orchestration":
            rows += orchestration.targets(
                section, _ok(sections, "orchestration_anchor"), _ok(sections, "orchestration_database")
            )
        elif targets:
            rows += targets(section)
    if "only" in results:  # a partial run has no runtime to judge
        return rows
    limit = RUNTIME_LIMIT_S[results["mode"]]
    rows.append(
        {
            "id": "bench_runtime",
            "benchmark": "bench",
            "figure": f"`make bench{'-quick' if results['mode'] == 'quick' else ''}` runtime",
            "value": results["duration_s"],
            "unit": "s",
            "target": f"< {limit} s",
            "met": results["duration_s"] < limit,
            "blocker": _longest_parts(results),
        }
    )
    return rows


def _longest_parts(results: dict) -> str:
    """The run's five longest parts: sections, and phases outside them (stack starts, fan-outs)."""
    parts = {name: s["seconds"] for name, s in results["sections"].items() if s.get("seconds")}
    # A stack's phase holds the sections run on it: its start, stop and fan-outs are counted apart.
    phases = results.get("phase_seconds", {})
    parts |= {name: v for name, v in phases.items() if not name.startswith("stack, ") or ": " in name}
    longest = sorted(parts.items(), key=lambda kv: -kv[1])[:5]
    load = results["machine"].get("load_avg")
    return (
        "the longest parts: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in longest)
        + (f"; load {load} at the start, neighbours' processes slow every fan-out" if load else "")
    )


def _ok(sections: dict, name: str) -> dict | None:
    section = sections.get(name) or {}
    return section if section.get("status") == "ok" else None


def _value(row: dict) -> str:
    value = row["value"]
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    unit = row["unit"]
    return f"{value}{unit}" if unit == "x" else f"{value} {unit}".strip()


def _status(row: dict) -> str:
    if row.get("status") == "error":
        return "**error**"
    return {True: "met", False: "**missed**", None: "n/a"}[row["met"]]


def markdown(results: dict) -> str:
    """The targets table, the figures table and, for every miss, what stands in the way."""
    machine = results["machine"]
    lines = [
        f"fanout benchmarks, {results['mode']} mode, {results['date']}: {machine['cpus']} cores "
        f"({machine['cpu_model']}), {machine['memory_gib']} GiB, load {machine['load_avg']} at start; "
        f"Airflow {machine['airflow']}, torch {machine['torch']}, dask {machine['dask']}; "
        f"{results['duration_s']:.0f} s in all.",
        "",
        "| Benchmark | Figure | Measured | Target | Status |",
        "|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| {row['benchmark']} | {row['figure']}{note} | {_value(row)} | {row['target']} | {_status(row)} |"
        )
    lines += ["", "| Benchmark | Figure | Value |", "|---|---|---|"]
    sections = results["sections"]
    for name, (_, figures) in SECTIONS.items():
        if name == "orchestration" and name not in sections and _ok(sections, "orchestration_database"):
            # ``--only database``: the what-if stack's rows on their own
            rows = orchestration.figures(None, None, _ok(sections, "orchestration_database"))
            lines += [f"| {name} | {figure} | {value} |" for figure, value in rows]
            continue
        if name not in sections and "only" in results:
            continue  # not selected in this partial run
        section = sections.get(name) or {}
        status = section.get("status")
        if status != "ok":
            lines.append(f"| {name} | {status or 'not run'} | {section.get('reason', '')} |")
            continue
        if name == "orchestration":
            rows = orchestration.figures(
                section, _ok(sections, "orchestration_anchor"), _ok(sections, "orchestration_database")
            )
            for extra in ("orchestration_anchor", "orchestration_database"):
                if (sections.get(extra) or {}).get("status") == "error":
                    rows.append((extra, f"error: {sections[extra]['reason']}"))
        else:
            rows = figures(section) if figures else []
        lines += [f"| {name} | {figure} | {value} |" for figure, value in rows]
    misses = [row for row in results["targets"] if row["met"] is False and row.get("blocker")]
    if misses:
        lines += ["", "What stands in the way of each miss:", ""]
        seen = set()
        for row in misses:
            if row["blocker"] in seen:
                continue
            seen.add(row["blocker"])
            lines.append(f"- **{row['figure']}**: {row['blocker']}.")
    return "\n".join(lines) + "\n"


def update_readme(table: str, result_path: Path) -> None:
    """Put the latest table and a link to its JSON between the README's markers."""
    if not README.exists():
        return
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return
    resolved = result_path.resolve()
    link = resolved.relative_to(BENCH_DIR) if resolved.is_relative_to(BENCH_DIR) else resolved
    block = f"{README_START}\nLatest full run: [`{link}`]({link}).\n\n{table}{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    README.write_text(pattern.sub(lambda _: block, text))
