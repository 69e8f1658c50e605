"""Training curves as a picture: the logged loss and dev F1 of a run, from its `metrics.jsonl`.

    >>> from ragloop.training.plot import plot_metrics
    >>> plot_metrics("runs/rag/metrics.jsonl")    # -> runs/rag/metrics.png, or None without matplotlib

The trainer calls this after every evaluation, so the picture follows the run. The PNG is drawn in
memory and written to a temporary name, then renamed: a reader never sees half a file. Without
matplotlib (`pip install matplotlib`) it does nothing; a plot that fails is logged, never fatal.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_curves(metrics: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(loss points, dev F1 points), each a list of (step, value), from a metrics.jsonl."""
    loss, f1 = [], []
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "loss" in record:
            loss.append((record["step"], record["loss"]))
        if "dev_f1" in record:
            f1.append((record["step"], record["dev_f1"]))
    return loss, f1


def plot_metrics(metrics: str | Path, out: str | Path | None = None) -> Path | None:
    """Draw loss and dev F1 against the step into `out` (default: metrics.png next to `metrics`).
    Returns the PNG's path, or None when matplotlib is missing, the log is empty or drawing failed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from ragloop.io import atomic_write_bytes

    metrics = Path(metrics)
    out = Path(out) if out is not None else metrics.with_suffix(".png")
    try:
        loss, f1 = read_curves(metrics)
        if not loss and not f1:
            return None
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        FigureCanvasAgg(fig)  # no pyplot: no global backend, no window, safe in a server thread
        left, right = fig.subplots(1, 2)
        for ax, points, title, colour in ((left, loss, "training loss (mean over the logging window)", "C0"),
                                          (right, f1, "dev F1", "C1")):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if points:
                ax.plot(*zip(*points), color=colour, marker="o" if len(points) < 30 else None)
            else:
                ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(out, buffer.getvalue())
    except (OSError, ValueError, KeyError, TypeError) as e:  # a plot is a convenience, never worth a failed run
        log.warning("could not plot %s: %s", metrics, e)
        return None
    return out
