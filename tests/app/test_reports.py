"""Reports: JSON summary, CSV scores, standalone HTML with an SVG histogram."""

from __future__ import annotations

import json

from pynomaly.domain.reports import histogram, render

JOB = {"id": "job<1>", "detector": "ecod", "params": {}, "steps": ["detect"]}
RESULT = {
    "detector": "ecod",
    "params": {},
    "threshold": 2.0,
    "rows": 4,
    "anomaly_count": 1,
    "anomaly_rate": 0.25,
    "columns": ["a"],
    "scores": [0.5, 1.0, 1.5, 3.0],
    "labels": [0, 0, 0, 1],
    "top_anomalies": [{"row": 3, "score": 3.0, "values": {"a": 9.0}, "contributions": {"a": 1.0}}],
}


def test_json_report_has_no_score_arrays() -> None:
    data = json.loads(render("json", JOB, RESULT))
    assert data["job"]["id"] == "job<1>" and data["result"]["anomaly_count"] == 1
    assert "scores" not in data["result"]


def test_csv_report_has_one_row_per_input_row() -> None:
    lines = render("csv", JOB, RESULT).splitlines()
    assert lines[0] == "row,score,is_anomaly" and len(lines) == 5 and lines[4] == "3,3,1"


def test_html_report_is_standalone_with_histogram_and_escaped() -> None:
    page = render("html", JOB, RESULT)
    assert '<svg id="histogram"' in page and "<rect" in page
    assert "job&lt;1&gt;" in page and "job<1>" not in page
    assert "<script" not in page and "http" not in page.replace('lang="en"', "")


def test_histogram_marks_bins_above_threshold() -> None:
    bars = histogram(RESULT["scores"], 2.0, bins=5)
    assert sum(b["count"] for b in bars) == 4
    assert bars[-1]["above"] and not bars[0]["above"]
