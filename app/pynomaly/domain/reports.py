"""Reports of a finished detection: JSON, CSV and a standalone HTML page with a score histogram."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

import numpy as np

REPORT_FORMATS = ("json", "csv", "html")
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}


def render_json(job: dict[str, Any], result: dict[str, Any]) -> str:
    summary = {k: v for k, v in result.items() if k not in ("scores", "labels")}
    return json.dumps({"job": _job_summary(job), "result": summary}, indent=2, sort_keys=True)


def render_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "score", "is_anomaly"])
    for i, (score, label) in enumerate(zip(result["scores"], result["labels"], strict=True)):
        writer.writerow([i, f"{score:.6g}", label])
    return out.getvalue()


def histogram(scores: list[float], threshold: float, bins: int = 30) -> list[dict[str, float]]:
    values = np.asarray(scores, dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins)
    return [
        {
            "start": float(edges[i]),
            "end": float(edges[i + 1]),
            "count": int(counts[i]),
            "above": bool(edges[i] >= threshold),
        }
        for i in range(len(counts))
    ]


def render_html(job: dict[str, Any], result: dict[str, Any]) -> str:
    """One self-contained file: inline CSS and an inline SVG histogram, no scripts or remote assets."""
    bars = histogram(result["scores"], result["threshold"])
    width, height, pad = 640, 220, 30
    peak = max((b["count"] for b in bars), default=1) or 1
    bar_w = (width - 2 * pad) / max(len(bars), 1)
    lo, hi = (bars[0]["start"], bars[-1]["end"]) if bars else (0.0, 1.0)
    span = (hi - lo) or 1.0
    rects = []
    for i, b in enumerate(bars):
        h = (height - 2 * pad) * b["count"] / peak
        colour = "#d62728" if b["above"] else "#1f77b4"
        rects.append(
            f'<rect x="{pad + i * bar_w:.1f}" y="{height - pad - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{b["start"]:.4g} to {b["end"]:.4g}: {b["count"]}</title></rect>'
        )
    tx = pad + (width - 2 * pad) * (result["threshold"] - lo) / span
    threshold_line = (
        f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad}" y2="{height - pad}" stroke="#333" stroke-dasharray="4"/>'
    )
    rows = "".join(
        "<tr><td>{row}</td><td>{score:.4g}</td><td>{top}</td></tr>".format(
            row=a["row"],
            score=a["score"],
            top=html.escape(
                ", ".join(f"{k} {v:.0%}" for k, v in sorted(a["contributions"].items(), key=lambda kv: -kv[1])[:3])
            ),
        )
        for a in result["top_anomalies"]
    )
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pynomaly report {esc(job["id"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}.k{{color:#666}}</style></head>
<body><h1>Anomaly report</h1>
<p class="k">Job <code>{esc(job["id"])}</code> &middot; detector <b>{esc(result["detector"])}</b> &middot;
{result["rows"]} rows &middot; <b>{result["anomaly_count"]}</b> anomalies ({result["anomaly_rate"]:.1%}) &middot;
threshold {result["threshold"]:.4g}</p>
<h2>Score distribution</h2>
<svg id="histogram" width="{width}" height="{height}" role="img" aria-label="Histogram of anomaly scores">
<line x1="{pad}" x2="{width - pad}" y1="{height - pad}" y2="{height - pad}" stroke="#999"/>{"".join(rects)}{threshold_line}
<text x="{pad}" y="{height - 8}" font-size="11">{lo:.3g}</text><text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{hi:.3g}</text>
</svg>
<h2>Top anomalies</h2>
<table><thead><tr><th>Row</th><th>Score</th><th>Main contributing features</th></tr></thead><tbody>{rows}</tbody></table>
</body></html>
"""


def render(fmt: str, job: dict[str, Any], result: dict[str, Any]) -> str:
    if fmt == "json":
        return render_json(job, result)
    if fmt == "csv":
        return render_csv(result)
    if fmt == "html":
        return render_html(job, result)
    raise ValueError(f"unknown report format {fmt!r}")


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "detector",
        "params",
        "contamination",
        "threshold",
        "priority",
        "steps",
        "dataset",
        "created_at",
        "started_at",
        "finished_at",
    )
    return {k: job.get(k) for k in keys}
