"""The fleet view: one row per device x artifact (top-1 drop with CI, agreement, p50/p99, status)."""

from __future__ import annotations

from typing import Any, List


def matrix_rows(results: List[Any]) -> List[List[str]]:
    """Table cells for every device that answered, and one row for each device that did not."""
    rows = []
    for result in results:
        host = result.target.host
        if result.verify is None:
            rows.append([host, "-", "-", "-", "-", "-", f"ERROR: {result.error}"])
            continue
        for entry in result.verify["artifacts"]:
            if "accuracy" not in entry:
                rows.append([host, entry["name"], "-", "-", "-", "-", entry["status"].upper()])
                continue
            acc, lat = entry["accuracy"], entry.get("latency") or {}
            low, high = acc["top1_drop_ci"]
            rows.append([
                host, entry["name"], f"{acc['top1_drop']:+.2f} [{low:+.2f}, {high:+.2f}]",
                f"{entry['agreement']['agreement_pct']:.1f}%",
                f"{lat['p50_ms']:.2f}" if lat else "-", f"{lat['p99_ms']:.2f}" if lat else "-",
                entry["status"].upper(),
            ])
    return rows


def matrix_lines(results: List[Any]) -> List[str]:
    """The matrix as aligned text lines, header first."""
    header = ["device", "artifact", "top-1 drop [CI]", "agreement", "p50 ms", "p99 ms", "status"]
    rows = [header] + matrix_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
