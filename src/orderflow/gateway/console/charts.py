"""The console's charts as inline SVG, drawn on the server from the gateway's own recent
activity (gateway.metrics.RecentActivity): no charting library, nothing from a CDN.

Each chart is an accessible image (role="img" with a title and a description that says
what it shows in words); the page also lists the figures as text.
"""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

from orderflow.gateway.metrics import StepLatency

# Outcome -> fill, in the order they are stacked (bottom first). Colours have at least
# 3:1 contrast against the white background (WCAG non-text contrast).
OUTCOME_COLOURS = {
    "confirmed": "#1a7f37",
    "rejected": "#cf222e",
    "unfinished": "#9a6700",
}
P50_COLOUR = "#0969da"
P99_COLOUR = "#8250df"


def _attrs(**values: object) -> str:
    return " ".join(f'{k.replace("_", "-")}="{escape(str(v))}"' for k, v in values.items())


def outcomes_per_minute(minutes: list[tuple[int, dict[str, int]]]) -> Markup:
    """Stacked bars: orders placed per minute by outcome, oldest minute on the left."""
    width, height, left, bottom, top = 640, 180, 36, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([sum(c.values()) for _, c in minutes] + [1])
    n = max(len(minutes), 1)
    bar = plot_w / n
    totals = {o: sum(c.get(o, 0) for _, c in minutes) for o in OUTCOME_COLOURS}
    words = ", ".join(f"{totals[o]} {o}" for o in OUTCOME_COLOURS)
    parts = [
        f"<svg {_attrs(viewBox=f'0 0 {width} {height}', role='img')} "
        'aria-labelledby="chart-outcomes-title chart-outcomes-desc" class="chart">',
        '<title id="chart-outcomes-title">Orders per minute by outcome, last hour</title>',
        f'<desc id="chart-outcomes-desc">In the last {len(minutes)} minutes: {escape(words)}; '
        f"at most {peak} in one minute.</desc>",
        f"<line {_attrs(x1=left, y1=top + plot_h, x2=width - 8, y2=top + plot_h)} "
        'stroke="#57606a"/>',
        f'<text {_attrs(x=left - 4, y=top + 10)} text-anchor="end" class="axis">{peak}</text>',
        f'<text {_attrs(x=left - 4, y=top + plot_h)} text-anchor="end" class="axis">0</text>',
    ]
    for i, (start, counts) in enumerate(minutes):
        y: float = top + plot_h
        for outcome, colour in OUTCOME_COLOURS.items():
            count = counts.get(outcome, 0)
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            at = datetime.fromtimestamp(start, UTC).strftime("%H:%M")
            parts.append(
                f"<rect {_attrs(x=round(left + i * bar + 1, 2), y=round(y, 2))} "
                f"{_attrs(width=round(max(bar - 2, 1), 2), height=round(h, 2), fill=colour)}>"
                f"<title>{at} UTC: {count} {outcome}</title></rect>"
            )
    if minutes:
        first = datetime.fromtimestamp(minutes[0][0], UTC).strftime("%H:%M")
        last = datetime.fromtimestamp(minutes[-1][0], UTC).strftime("%H:%M")
        parts.append(f'<text {_attrs(x=left, y=height - 6)} class="axis">{first} UTC</text>')
        parts.append(
            f'<text {_attrs(x=width - 8, y=height - 6)} text-anchor="end" class="axis">'
            f"{last} UTC</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def step_latency(latencies: list[StepLatency]) -> Markup:
    """Two bars per saga step: p50 and p99 of its duration in the last hour, in ms."""
    row, label_w, width = 34, 130, 640
    height = max(len(latencies), 1) * row + 12
    plot_w = width - label_w - 80
    peak = max([x.p99 for x in latencies] + [1e-6])
    words = "; ".join(
        f"{x.step} p50 {x.p50 * 1000:.1f} ms, p99 {x.p99 * 1000:.1f} ms" for x in latencies
    )
    parts = [
        f"<svg {_attrs(viewBox=f'0 0 {width} {height}', role='img')} "
        'aria-labelledby="chart-latency-title chart-latency-desc" class="chart">',
        '<title id="chart-latency-title">Saga step latency, p50 and p99, last hour</title>',
        f'<desc id="chart-latency-desc">{escape(words or "no saga steps in the last hour")}</desc>',
    ]
    if not latencies:
        parts.append(f'<text {_attrs(x=8, y=24)} class="axis">No saga steps yet.</text>')
    for i, x in enumerate(latencies):
        y = 6 + i * row
        parts.append(
            f'<text {_attrs(x=label_w - 6, y=y + 20)} text-anchor="end">{escape(x.step)}</text>'
        )
        for j, (value, colour, name) in enumerate(
            ((x.p50, P50_COLOUR, "p50"), (x.p99, P99_COLOUR, "p99"))
        ):
            w = max(plot_w * value / peak, 1)
            by = y + 4 + j * 13
            parts.append(
                f"<rect {_attrs(x=label_w, y=by, width=round(w, 2), height=11, fill=colour)}>"
                f"<title>{escape(x.step)} {name}: {value * 1000:.1f} ms</title></rect>"
            )
            parts.append(
                f'<text {_attrs(x=round(label_w + w + 4, 2), y=by + 10)} class="axis">'
                f"{name} {value * 1000:.1f} ms</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def stock_bar(available: int, reserved: int, sold: int) -> Markup:
    """One item's stock as a bar of available / reserved / sold."""
    total = max(available + reserved + sold, 1)
    width, height = 200, 14
    parts = [
        f"<svg {_attrs(viewBox=f'0 0 {width} {height}', width=width, height=height)} "
        f'role="img" aria-label="{available} available, {reserved} reserved, {sold} sold" '
        'class="stock">'
    ]
    x = 0.0
    for value, colour in ((available, "#1a7f37"), (reserved, "#9a6700"), (sold, "#57606a")):
        if value:
            w = width * value / total
            parts.append(
                f"<rect {_attrs(x=round(x, 2), y=0, width=round(w, 2), height=height)} "
                f'fill="{colour}"/>'
            )
            x += w
    parts.append("</svg>")
    return Markup("".join(parts))
