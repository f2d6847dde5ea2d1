"""How a demo run ends: the summary table and pickup medians on the terminal, and the HTML report
(thumbnail gallery and SVG timeline) that opens from disk with nothing to fetch.

The page's markup and style are in ``report_template.html`` next to this module.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from string import Template

import httpx
from rich import box
from rich.table import Table
from rich.text import Text

from devstack.demo.monitor import STATE_STYLE, TERMINAL, Monitor, TrackedJob, fmt_seconds, now


async def fetch_thumbnails(jobs: list[TrackedJob]) -> None:
    """Embed each thumbnail in the report, fetched from the Cloudinary stand-in while it runs:
    the report must open from disk, with no network."""
    async with httpx.AsyncClient(timeout=10) as client:
        for job in jobs:
            if job.status != "complete" or not job.thumbnail_url:
                continue
            try:
                response = await client.get(job.thumbnail_url)
                response.raise_for_status()
            except httpx.HTTPError:
                continue  # the gallery shows "no thumbnail"; the verdict is about the job row
            kind = response.headers.get("content-type", "image/png").split(";")[0]
            job.thumbnail = f"data:{kind};base64,{base64.b64encode(response.content).decode()}"


def summary_table(jobs: list[TrackedJob]) -> Table:
    table = Table(title="Summary", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("prompt", max_width=26, no_wrap=True, overflow="ellipsis")
    for name in ("ratio", "status", "pickup", "trigger", "duration", "attempts"):
        justify = "right" if name in ("pickup", "duration", "attempts") else "left"
        table.add_column(name, justify=justify, no_wrap=True)
    # The only column allowed to wrap: an error message is worth reading whole.
    table.add_column("error", overflow="fold", min_width=24)
    for job in jobs:
        table.add_row(
            str(job.number),
            Text(job.prompt),
            job.aspect_ratio,
            Text(job.status, style=STATE_STYLE.get(job.status, "")),
            fmt_seconds(job.pickup_latency),
            job.trigger or "-",
            fmt_seconds(job.duration),
            str(job.attempts),
            Text(job.error or ""),
        )
    return table


def pickup_by_trigger(jobs: list[TrackedJob]) -> list[str]:
    """Median pickup latency per claim trigger: what Realtime buys over polling."""
    by_trigger: dict[str, list[float]] = {}
    for job in jobs:
        if job.trigger and job.pickup_latency is not None:
            by_trigger.setdefault(job.trigger, []).append(job.pickup_latency)
    return [
        f"pickup by {trigger}: median {fmt_seconds(statistics.median(values))} "
        f"over {len(values)} job(s)"
        for trigger, values in sorted(by_trigger.items(), key=lambda kv: statistics.median(kv[1]))
    ]


# -- the HTML report ----------------------------------------------------------------------------


def write_report(path: Path, jobs: list[TrackedJob], monitor: Monitor, log_path: Path) -> None:
    complete = sum(job.status == "complete" for job in jobs)
    failed = sum(job.status == "failed" for job in jobs)
    cancelled = sum(job.status == "cancelled" for job in jobs)
    facts = pickup_by_trigger(jobs)
    if monitor.dropped_at and monitor.recovered_at:
        down = (monitor.recovered_at - monitor.dropped_at).total_seconds()
        cut = _offset(monitor, monitor.dropped_at)
        facts.append(f"Realtime socket cut at {cut}, healthy again {down:.1f} s later")
    states = " → ".join(
        f"{state} ({_offset(monitor, at)})" for at, state in monitor.realtime_events
    )
    facts.append(f"Realtime states: {states or '-'}")
    stats = "".join(f"<li>{html.escape(line)}</li>" for line in facts)
    cards = "\n".join(_card(job) for job in jobs)
    page = _template().substitute(
        generated=html.escape(now().astimezone().strftime("%Y-%m-%d %H:%M:%S")),
        total=len(jobs),
        complete=complete,
        failed=failed,
        cancelled=cancelled,
        stats=stats,
        timeline=timeline_svg(jobs, monitor),
        cards=cards,
        log=html.escape(log_path.as_uri()),
        legend="".join(_legend()),
    )
    path.write_text(page, encoding="utf-8")


def _offset(monitor: Monitor, at: datetime) -> str:
    return f"{(at - monitor.t0).total_seconds():.1f} s"


def _card(job: TrackedJob) -> str:
    esc = html.escape
    if job.thumbnail:
        picture = f'<img src="{job.thumbnail}" alt="{esc(job.prompt)}" width="256" height="256">'
    else:
        cancelled = job.status == "cancelled"
        reason = job.error or ("cancelled by its user" if cancelled else "no thumbnail")
        picture = f'<div class="noimg {esc(job.status)}">{esc(reason)}</div>'
    link = (
        f'<a href="{esc(job.image_url)}">image</a> <small>(served by the local stand-in while '
        "the demo runs)</small>"
        if job.image_url
        else "-"
    )
    rows = [
        ("prompt", esc(job.prompt)),
        ("generator", esc(job.sample.note if job.sample else "-")),
        ("model", esc(job.model or "-")),
        ("aspect ratio", esc(job.aspect_ratio)),
        ("status", f'<span class="{esc(job.status)}">{esc(job.status)}</span>'),
        ("trigger", esc(job.trigger or "-")),
        ("pickup latency", fmt_seconds(job.pickup_latency)),
        ("duration", fmt_seconds(job.duration)),
        ("attempts", str(job.attempts)),
        ("job id", f"<code>{esc(job.id)}</code>"),
        ("image", link),
    ]
    if job.error:
        rows.append(("error", esc(job.error)))
    details = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (
        f'<figure class="card">{picture}<figcaption><h3>#{job.number}</h3>'
        f"<dl>{details}</dl></figcaption></figure>"
    )


# Timeline geometry, in SVG user units.
_LABEL_W, _PLOT_W, _TRIGGER_W = 230, 640, 80
_ROW_H, _TOP, _BOTTOM = 22, 34, 30
_COLOURS = {
    "pending": "#c9ced6", "running": "#f0a500", "complete": "#2e9e4f", "failed": "#d23c3c",
    "cancelled": "#8e44ad",
}  # fmt: skip


def timeline_svg(jobs: list[TrackedJob], monitor: Monitor) -> str:
    """One row per job on a shared time axis: pending (grey) → running (amber) → a dot for
    complete (green), failed (red) or cancelled (purple); the Realtime outage shaded across all
    rows."""
    esc = html.escape
    origin = monitor.t0
    moments = [t for job in jobs for t in (job.created_at, job.started_at, job.completed_at) if t]
    moments += [t for t in (monitor.dropped_at, monitor.recovered_at) if t]
    span = max(1.0, max(((t - origin).total_seconds() for t in moments), default=1.0) * 1.03)

    def x(at: datetime) -> float:
        return _LABEL_W + max(0.0, (at - origin).total_seconds()) / span * _PLOT_W

    height = _TOP + _ROW_H * len(jobs) + _BOTTOM
    width = _LABEL_W + _PLOT_W + _TRIGGER_W
    bottom = _TOP + _ROW_H * len(jobs)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="job timeline">'
    ]
    step = next(s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 12)
    tick = 0.0
    while tick <= span:
        tx = _LABEL_W + tick / span * _PLOT_W
        parts.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 4}" x2="{tx:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{tx:.1f}" y="{bottom + 16}" class="tick">{tick:g} s</text>'
        )
        tick += step
    if monitor.dropped_at:
        x0 = x(monitor.dropped_at)
        x1 = x(monitor.recovered_at) if monitor.recovered_at else _LABEL_W + _PLOT_W
        parts.append(
            f'<rect x="{x0:.1f}" y="{_TOP - 4}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{bottom - _TOP + 4}" class="outage"><title>Realtime down: the worker '
            "polls</title></rect>"
            f'<line x1="{x0:.1f}" y1="{_TOP - 18}" x2="{x0:.1f}" y2="{bottom}" class="drop"/>'
            f'<text x="{x0 + 3:.1f}" y="{_TOP - 20}" class="droplabel">Realtime dropped</text>'
        )
        if monitor.recovered_at:
            parts.append(
                f'<text x="{x1 + 3:.1f}" y="{_TOP - 8}" class="recovered">healthy again</text>'
            )
    for row, job in enumerate(jobs):
        y = _TOP + row * _ROW_H
        mid = y + _ROW_H / 2
        label = f"#{job.number} {job.aspect_ratio} {job.prompt}"
        label = label if len(label) <= 34 else label[:33] + "…"
        parts.append(f'<text x="4" y="{mid + 4:.1f}" class="label">{esc(label)}</text>')
        tip = (
            f"job {job.number}: {job.status}; pickup {fmt_seconds(job.pickup_latency)} "
            f"({job.trigger or '-'}), duration {fmt_seconds(job.duration)}"
        )
        segments = [
            ("pending", job.created_at, job.started_at or job.completed_at or now()),
            ("running", job.started_at, job.completed_at or now()),
        ]
        for state, start, end in segments:
            if start is None or end is None:
                continue
            sx, ex = x(start), x(end)
            parts.append(
                f'<rect x="{sx:.1f}" y="{y + 5}" width="{max(1.5, ex - sx):.1f}" '
                f'height="{_ROW_H - 10}" fill="{_COLOURS[state]}" rx="2">'
                f"<title>{esc(tip)}</title></rect>"
            )
        if job.status in TERMINAL and job.completed_at:
            parts.append(
                f'<circle cx="{x(job.completed_at):.1f}" cy="{mid:.1f}" r="5" '
                f'fill="{_COLOURS[job.status]}"><title>{esc(tip)}</title></circle>'
            )
        parts.append(
            f'<text x="{_LABEL_W + _PLOT_W + 10}" y="{mid + 4:.1f}" class="trigger">'
            f"{esc(job.trigger or '')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> Iterator[str]:
    for state, colour in _COLOURS.items():
        yield f'<span><i style="background:{colour}"></i>{state}</span>'


def _template() -> Template:
    """The page, with ``$name`` placeholders (``string.Template``: the CSS keeps its braces)."""
    text = resources.files("devstack.demo").joinpath("report_template.html").read_text("utf-8")
    return Template(text)
