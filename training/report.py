"""A training run's curves as one self-contained HTML page (inline SVG: opens anywhere, needs nothing).

Reads `metrics.jsonl` (one record per epoch, as the training loop writes it): every loss term and every
validation metric becomes a line chart over epochs, the best epoch of the headline metric marked.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from hark.errors import HarkError

HEADLINE = "val_mAP@10"
WIDTH, HEIGHT, PAD = 520, 220, 44


class ReportError(HarkError):
    pass


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path}: not found; is {run_dir} a run folder written by `hark train`?")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}, line {number}: not a JSON object")
        records.append(record)
    if not records:
        raise ReportError(f"{path}: no records yet")
    return records


def series(history: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) per numeric key; a resumed run may repeat an epoch: the last record wins."""
    by_epoch: dict[float, dict[str, Any]] = {}
    for index, record in enumerate(history, start=1):
        epoch = record.get("epoch", index)
        if isinstance(epoch, bool) or not isinstance(epoch, int | float) or not math.isfinite(epoch):
            raise ReportError(f"record {index} of metrics.jsonl: 'epoch' must be a number, not {epoch!r}")
        by_epoch[float(epoch)] = record
    out: dict[str, list[tuple[float, float]]] = {}
    for epoch in sorted(by_epoch):
        for key, value in by_epoch[epoch].items():
            if key in {"epoch", "step"} or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                out.setdefault(key, []).append((epoch, float(value)))
    return out


def _chart(title: str, points: list[tuple[float, float]], best: tuple[float, float] | None) -> str:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD + (y - y0) / (y1 - y0) * (2 * PAD - HEIGHT)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"><title>epoch {x:g}: {y:.4g}</title>'
                   f"</circle>" for x, y in points)
    mark = ""
    if best is not None:
        mark = (f'<circle class="best" cx="{sx(best[0]):.1f}" cy="{sy(best[1]):.1f}" r="5">'
                f"<title>best: epoch {best[0]:g}, {best[1]:.4g}</title></circle>")
    axes = (f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
            f'<text x="{PAD}" y="{HEIGHT - PAD + 16}">{x0:g}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" text-anchor="end">epoch {x1:g}</text>'
            f'<text x="{PAD - 4}" y="{HEIGHT - PAD}" text-anchor="end">{y0:.3g}</text>'
            f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{y1:.3g}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">{axes}'
            f'<polyline points="{line}"/>{dots}{mark}</svg></figure>')


def render(run_dir: Path, out: Path | None = None) -> Path:
    """Write `RUN/report.html` (or `out`) with one chart per series; returns the file."""
    run_dir = Path(run_dir)
    curves = series(read_history(run_dir))
    best = None
    if HEADLINE in curves:
        best = max(curves[HEADLINE], key=lambda p: p[1])
    losses = sorted(k for k in curves if "loss" in k or k.startswith("kd_"))
    others = sorted(k for k in curves if k not in losses)
    charts = [_chart(k, curves[k], best if k == HEADLINE else None) for k in [*losses, *others]]
    summary = (f"best {HEADLINE} {best[1]:.2f} at epoch {best[0]:g}" if best else "no validation metric recorded")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>hark run {html.escape(run_dir.name)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5rem; color: #222; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }}
figcaption {{ font-weight: 600; margin-bottom: .25rem; }}
svg {{ width: 100%; height: auto; }}
polyline {{ fill: none; stroke: #2563eb; stroke-width: 2; }}
circle {{ fill: #2563eb; }} circle.best {{ fill: none; stroke: #dc2626; stroke-width: 2; }}
.axis {{ stroke: #999; }} text {{ font-size: 11px; fill: #555; }}
</style></head><body>
<h1>Run {html.escape(str(run_dir))}</h1>
<p>{html.escape(summary)}; {len(charts)} curves from metrics.jsonl.</p>
<main>{"".join(charts)}</main>
</body></html>
"""
    target = Path(out) if out else run_dir / "report.html"
    target.write_text(page, encoding="utf-8")
    return target
