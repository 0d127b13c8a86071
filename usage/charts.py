"""Server-rendered SVG charts for the cost dashboards: no JavaScript, no CDN, no network.
Every label is escaped; values are Decimal and only turned into pixels here."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#417690", "#e07b39", "#5b9f4a", "#b5485d", "#7a5fa8", "#999999")
_W, _H, _PAD_L, _PAD_B, _PAD_T = 720, 220, 70, 30, 10


def _money(value: Decimal) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:,.4f}"


def _axis(ceiling: Decimal) -> list[str]:
    parts = []
    plot_h = _H - _PAD_B - _PAD_T
    for step in range(5):
        value = ceiling * step / 4
        y = _H - _PAD_B - plot_h * step / 4
        parts.append(
            f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
            f"{escape(_money(value))}</text>"
        )
    return parts


def bar_chart(days: list[datetime], values: list[Decimal], *, title: str) -> SafeString:
    ceiling = max(values, default=Decimal(0)) or Decimal(1)
    plot_w, plot_h = _W - _PAD_L, _H - _PAD_B - _PAD_T
    width = plot_w / max(1, len(values))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="100%" '
        f'role="img" aria-label="{escape(title)}" class="usage-chart">',
        *_axis(ceiling),
    ]
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        h = float(value / ceiling) * plot_h
        x = _PAD_L + i * width
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{_H - _PAD_B - h:.1f}" width="{max(1.0, width - 2):.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{day:%Y-%m-%d}: '
            f"{escape(_money(value))}</title></rect>"
        )
        if len(days) <= 16 or i % max(1, len(days) // 15) == 0:
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{_H - 12}" font-size="9" '
                f'text-anchor="middle">{day:%m-%d}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built from escaped parts


def line_chart(days: list[datetime], series: dict[str, list[Decimal]], *, title: str) -> SafeString:
    ceiling = max((v for values in series.values() for v in values), default=Decimal(0))
    ceiling = ceiling or Decimal(1)
    plot_w, plot_h = _W - _PAD_L, _H - _PAD_B - _PAD_T
    step = plot_w / max(1, len(days) - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H + 20 * len(series)}" '
        f'width="100%" role="img" aria-label="{escape(title)}" class="usage-chart">',
        *_axis(ceiling),
    ]
    for n, (name, values) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        points = " ".join(
            f"{_PAD_L + i * step:.1f},{_H - _PAD_B - float(v / ceiling) * plot_h:.1f}"
            for i, v in enumerate(values)
        )
        total = sum(values, Decimal(0))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        y = _H + 14 + 20 * n
        parts.append(
            f'<rect x="{_PAD_L}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{_PAD_L + 16}" y="{y}" font-size="11">{escape(name)}: '
            f"{escape(_money(total))}</text>"
        )
    for i, day in enumerate(days):
        if len(days) <= 16 or i % max(1, len(days) // 15) == 0:
            parts.append(
                f'<text x="{_PAD_L + i * step:.1f}" y="{_H - 12}" font-size="9" '
                f'text-anchor="middle">{day:%m-%d}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built from escaped parts
