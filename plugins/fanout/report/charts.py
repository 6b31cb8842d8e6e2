"""The report's charts, drawn with matplotlib and embedded in the page as inline SVG.

Inline SVG keeps the page self-contained (no script, nothing fetched from elsewhere) and lets a
browser, or a test, find every bar: each one carries an ``id`` (``timeline-run-<task>-<map
index>-<try>``, ``loss-trial-<n>``, ...) and a ``<title>`` shown on hover.

matplotlib is imported on the first chart, in the api-server only; figures are built with the
object-oriented API (no pyplot state), so concurrent requests do not share anything.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from fanout.report.model import Run, TaskInstance, Try
from fanout.report.timeline import Summary, concurrency

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATE_COLOURS = {
    "success": "#2ca02c",
    "failed": "#d62728",
    "up_for_retry": "#ff7f0e",
    "upstream_failed": "#e377c2",
    "running": "#1f77b4",
    "restarting": "#9467bd",
}
OTHER_COLOUR = "#7f7f7f"
QUEUED_COLOUR = "#c7c7c7"
BEST_COLOUR = "#d62728"
# Tableau 10 without its red, which marks the best trial.
TRIAL_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_RC = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, drawn in the page's font
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, prefix: str, titles: Mapping[str, str] | None = None) -> str:
    """The figure as an ``<svg>`` element for inline use.

    Every ``id`` gets ``prefix`` (several charts share a page; matplotlib numbers its ids from 1
    in each), elements whose gid is in ``titles`` get a ``<title>`` tooltip, and the fixed
    size becomes a viewBox that scales to the page's width.
    """
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({**_RC, "svg.hashsalt": prefix}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]

    def prefixed(match: re.Match) -> str:
        name = match.group(2)
        return f"{match.group(1)}{name if name.startswith(prefix + '-') else f'{prefix}-{name}'}"

    svg = re.sub(r'(\bid=")([^"]+)', prefixed, svg)
    svg = re.sub(r"(url\(#)([^)]+)", prefixed, svg)
    svg = re.sub(r'(xlink:href="#)([^"]+)', prefixed, svg)
    svg = re.sub(r'(<svg[^>]*?)\swidth="[^"]*"\sheight="[^"]*"', r'\1 class="chart"', svg, count=1)
    for gid, title in (titles or {}).items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{escape(title)}</title>', 1)
    return svg


def _seconds(when: datetime | None, origin: datetime) -> float | None:
    return None if when is None else (when - origin).total_seconds()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


def _short(text: str, limit: int = 46) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_bar_id(ti: TaskInstance | Try, try_number: int | None = None) -> str:
    number = try_number if try_number is not None else getattr(ti, "try_number", 0)
    return f"timeline-run-{ti.task_id}-{ti.map_index}-{number}"


def _try_title(ti: TaskInstance, t: Try) -> str:
    parts = [f"{ti.name}, try {t.try_number}: {t.state or 'no state'}"]
    parts.append(f"queued {duration(t.queue_seconds)}, ran {duration(t.run_seconds)}")
    if t.start:
        end = f"-{t.end:%H:%M:%S}" if t.end else " (running)"
        parts.append(f"{t.start:%H:%M:%S}{end} UTC")
    if t.pod:
        parts.append(f"pod {t.pod.name} on {t.pod.node or 'an unknown node'} ({t.pod.pool or '?'} pool)")
    elif t.hostname:
        parts.append(f"on {t.hostname}")
    if t.reason:
        parts.append(f"reason: {t.reason}")
    return "; ".join(parts)


def timeline(run: Run, summary: Summary, now: datetime | None = None) -> str:
    """One row per task instance: each try's queued wait (grey) and run (state colour), the
    critical path outlined; below, the tasks running at once against the run's capacity."""
    from matplotlib.patches import Patch

    tis = list(run.task_instances)
    tries = [t for ti in tis for t in ti.tries]
    starts = [w for t in tries for w in (t.queued, t.start) if w]
    origin = run.start or (min(starts) if starts else now) or datetime.now().astimezone()
    ends = [t.end for t in tries if t.end] + ([run.end] if run.end else [])
    horizon = max([*ends, origin]) if ends else (now or origin)
    on_path = {(s.task_id, s.map_index) for s in summary.critical_path}

    rows = max(1, len(tis))
    row_height = max(0.13, min(0.3, 36 / rows))
    fig = _figure(10, 1.6 + rows * row_height + 1.4)
    grid = fig.add_gridspec(2, 1, height_ratios=[rows * row_height + 0.4, 1.2])
    ax = fig.add_subplot(grid[0])
    titles: dict[str, str] = {}
    for y, ti in enumerate(tis):
        critical = ti.key in on_path
        for t in ti.tries:
            if t.queued and t.start and t.start > t.queued:
                (bar,) = ax.barh(
                    y,
                    (t.start - t.queued).total_seconds(),
                    left=_seconds(t.queued, origin),
                    height=0.6,
                    color=QUEUED_COLOUR,
                )
                bar.set_gid(f"timeline-queued-{ti.task_id}-{ti.map_index}-{t.try_number}")
            if t.start:
                end = t.end or now or horizon
                (bar,) = ax.barh(
                    y,
                    max((end - t.start).total_seconds(), 0.0),
                    left=_seconds(t.start, origin),
                    height=0.6,
                    color=STATE_COLOURS.get(t.state or "", OTHER_COLOUR),
                    edgecolor="black" if critical else "none",
                    linewidth=1.2 if critical else 0,
                )
                gid = run_bar_id(t)
                bar.set_gid(gid)
                titles[gid] = _try_title(ti, t)
    ax.set_yticks(range(len(tis)), [_short(ti.name) for ti in tis], fontsize=8 if rows < 40 else 6)
    for label, ti in zip(ax.get_yticklabels(), tis, strict=True):
        if ti.key in on_path:
            label.set_fontweight("bold")
    ax.set_ylim(len(tis) - 0.4, -0.6)
    ax.set_xlabel("seconds since the run started")
    ax.grid(axis="y", visible=False)
    present = sorted(
        {t.state or "" for t in tries if t.start},
        key=lambda s: list(STATE_COLOURS).index(s) if s in STATE_COLOURS else 99,
    )
    handles = [Patch(color=QUEUED_COLOUR, label="queued")] + [
        Patch(color=STATE_COLOURS.get(s, OTHER_COLOUR), label=s.replace("_", " ") or "no state")
        for s in present
    ]
    if on_path:
        handles.append(Patch(facecolor="white", edgecolor="black", label="critical path"))
    # Above the bars, so it never hides one.
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0, 1.0),
        ncols=len(handles),
        fontsize=7,
        frameon=False,
    )

    lower = fig.add_subplot(grid[1], sharex=ax)
    steps = concurrency(tries)
    if steps:
        xs = [_seconds(when, origin) for when, _ in steps]
        ys = [n for _, n in steps]
        lower.step(xs, ys, where="post", color="#1f77b4", label="running")
        lower.fill_between(xs, ys, step="post", alpha=0.25, color="#1f77b4")
    if summary.capacity:
        lower.axhline(summary.capacity.slots, color="black", linestyle="--", linewidth=1, label="capacity")
    if summary.achieved_parallelism is not None:
        lower.axhline(summary.achieved_parallelism, color="#ff7f0e", linewidth=1, label="achieved (mean)")
    top = max([*(n for _, n in steps), summary.capacity.slots if summary.capacity else 1, 1])
    lower.set_ylim(0, top + 0.5)
    lower.set_ylabel("tasks running")
    lower.yaxis.get_major_locator().set_params(integer=True)
    lower.legend(loc="upper right", fontsize=7, ncols=3)
    right = max(_seconds(horizon, origin) or 0.0, 1.0)
    ax.set_xlim(0, right * 1.02)
    return to_svg(fig, "timeline", titles)


def pipeline(chain: Sequence[Any]) -> str:
    """One row per run of the asset-chained pipeline: queued (grey) and running (state colour)."""
    queued = [r.queued or r.start for r in chain if (r.queued or r.start)]
    if not queued:
        return ""
    origin = min(queued)
    fig = _figure(10, 0.9 + 0.42 * len(chain))
    ax = fig.add_subplot()
    titles = {}
    for y, r in enumerate(chain):
        if r.queued and r.start and r.start > r.queued:
            ax.barh(
                y,
                (r.start - r.queued).total_seconds(),
                left=_seconds(r.queued, origin),
                color=QUEUED_COLOUR,
                height=0.6,
            )
        if r.start:
            end = r.end or datetime.now(r.start.tzinfo)
            (bar,) = ax.barh(
                y,
                (end - r.start).total_seconds(),
                left=_seconds(r.start, origin),
                color=STATE_COLOURS.get(r.state or "", OTHER_COLOUR),
                height=0.6,
            )
            gid = f"pipeline-run-{r.dag_id}"
            bar.set_gid(gid)
            wall = (end - r.start).total_seconds()
            titles[gid] = f"{r.dag_id} {r.run_id}: {r.state}, {duration(wall)}" + (
                f", triggered by {r.via}" if r.via else ""
            )
            ax.annotate(
                duration(wall),
                (_seconds(end, origin), y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    ax.set_yticks(range(len(chain)), [r.dag_id for r in chain])
    ax.set_ylim(len(chain) - 0.4, -0.6)
    ax.set_xlabel("seconds since the first run was queued")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)
    return to_svg(fig, "pipeline", titles)


def _trial_label(entry: Mapping[str, Any]) -> str:
    hp = entry.get("hyperparameters") or {}
    rmse = entry.get("val_rmse")
    shape = f"{hp.get('depth', '?')}x{hp.get('hidden', '?')}"
    rmse_text = f"{rmse:.3g}" if isinstance(rmse, (int, float)) else "diverged"
    return f"trial {entry.get('trial')}: lr {hp.get('lr', '?')}, {shape}, RMSE {rmse_text}"


def _finite(values: Sequence[Any]) -> list[tuple[int, float]]:
    return [
        (epoch, float(v))
        for epoch, v in enumerate(values, 1)
        if isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    ]


def loss_curves(ranking: Sequence[Mapping[str, Any]], best_trial: int | None) -> str:
    """Every trial's validation and training loss per epoch (log scale); the best in thick red."""
    fig = _figure(10, 4.2)
    val_ax, train_ax = fig.subplots(1, 2, sharey=True)
    titles = {}
    others = [e for e in ranking if e.get("trial") != best_trial]
    best = [e for e in ranking if e.get("trial") == best_trial]
    for i, entry in enumerate([*others, *best]):
        is_best = entry.get("trial") == best_trial
        colour = BEST_COLOUR if is_best else TRIAL_COLOURS[i % len(TRIAL_COLOURS)]
        label = _trial_label(entry) + (" (best)" if is_best else "")
        for ax, key in ((val_ax, "val_loss"), (train_ax, "train_loss")):
            points = _finite(entry.get(key) or [])
            if not points:
                continue
            (line,) = ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=colour,
                linewidth=2.6 if is_best else 1.1,
                alpha=1.0 if is_best else 0.75,
                marker="o" if len(points) <= 30 else None,
                markersize=3,
                label=label if ax is val_ax else None,
                zorder=3 if is_best else 2,
            )
            gid = f"loss-{key.split('_')[0]}-trial-{entry.get('trial')}"
            line.set_gid(gid)
            titles[gid] = label
        if is_best and entry.get("best_epoch"):
            epoch = entry["best_epoch"]
            values = entry.get("val_loss") or []
            if 0 < epoch <= len(values) and isinstance(values[epoch - 1], (int, float)):
                val_ax.plot(
                    [epoch], [values[epoch - 1]], marker="*", markersize=14, color=BEST_COLOUR, zorder=4
                )
    for ax, title in ((val_ax, "validation loss"), (train_ax, "training loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
    val_ax.set_ylabel("MSE of the standardised target")
    if ranking:
        fig.legend(loc="outside lower center", ncols=2 if len(ranking) > 1 else 1, fontsize=8)
    return to_svg(fig, "loss", titles)


def drops(dropped: Mapping[str, int], rows_in: int) -> str:
    """Rows dropped by preprocessing, per reason, most first."""
    items = sorted(((reason, int(n)) for reason, n in dropped.items()), key=lambda item: -item[1])
    fig = _figure(10, 0.8 + 0.3 * max(1, len(items)))
    ax = fig.add_subplot()
    titles = {}
    for y, (reason, n) in enumerate(items):
        (bar,) = ax.barh(y, n, color="#8c564b", height=0.6)
        gid = f"drops-reason-{reason}"
        bar.set_gid(gid)
        share = f" ({n / rows_in:.2%} of rows)" if rows_in else ""
        titles[gid] = f"{reason.replace('_', ' ')}: {n:,} rows{share}"
        ax.annotate(f"{n:,}", (n, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(items)), [reason.replace("_", " ") for reason, _ in items])
    ax.set_ylim(len(items) - 0.4, -0.6)
    ax.set_xlabel("rows dropped")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.1)
    return to_svg(fig, "drops", titles)
