"""Compare an experiment's results with its expected figures: each figure within its named tolerance?

    >>> from bench.experiments.check import check, report
    >>> from bench.experiments.spec import load_experiments
    >>> exp = load_experiments()["readers"]
    >>> rows = check(exp, exp.results_path())          # one Row per expected figure
    >>> print(report(rows))                            # markdown: figure, expected, got, tolerance, verdict
    >>> all(r.ok for r in rows)
    True

A figure "moved" when |got - expected| exceeds its tolerance (abs + rel x |expected|); it is
"missing" when the results file, or the figure inside it, is not there. Either fails the check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.experiments.spec import Experiment
from bench.suite.tables import table

HEAD = ["experiment", "figure", "expected", "got", "tolerance", "verdict"]


@dataclass(frozen=True)
class Row:
    experiment: str
    figure: str
    expected: float
    got: float | None
    tolerance: str  # its name and bound, e.g. "f1 (±0.03)"
    verdict: str  # "ok", "moved", "missing"
    note: str = ""  # why missing, or by how much it moved

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def lookup(data: Any, at: tuple | list) -> Any:
    """The value at path `at` in parsed JSON (see `bench.experiments.spec`); LookupError says where it
    stopped."""
    here = data
    for i, step in enumerate(at):
        where = "/".join(map(str, at[:i])) or "the top"
        if isinstance(step, dict):
            if not isinstance(here, list):
                raise LookupError(f"at {where}: expected a list to pick {step} from")
            found = [x for x in here if isinstance(x, dict) and all(x.get(k) == v for k, v in step.items())]
            if len(found) != 1:
                raise LookupError(f"at {where}: {len(found)} entries match {step}")
            here = found[0]
        elif isinstance(step, int) and isinstance(here, list):
            if not -len(here) <= step < len(here):
                raise LookupError(f"at {where}: no entry {step}")
            here = here[step]
        elif isinstance(here, dict) and step in here:
            here = here[step]
        else:
            raise LookupError(f"at {where}: no key {step!r}")
    return here


def check_data(exp: Experiment, data: Any) -> list[Row]:
    """One Row per expected figure of `exp`, read from parsed results `data`."""
    rows = []
    for fig in exp.figures:
        tol = exp.tolerances[fig.tolerance]
        label = f"{fig.tolerance} ({tol.describe()})"
        try:
            got = lookup(data, fig.at)
        except LookupError as e:
            rows.append(Row(exp.name, fig.figure, fig.expected, None, label, "missing", str(e)))
            continue
        if isinstance(got, bool) or not isinstance(got, (int, float)) or math.isnan(got):
            rows.append(Row(exp.name, fig.figure, fig.expected, None, label, "missing", f"not a number: {got!r}"))
            continue
        delta = float(got) - fig.expected
        moved = abs(delta) > tol.bound(fig.expected) + 1e-12
        rows.append(Row(exp.name, fig.figure, fig.expected, float(got), label, "moved" if moved else "ok",
                        f"{delta:+.4g}" if moved else ""))
    return rows


def check(exp: Experiment, results: str | Path) -> list[Row]:
    """check_data on the results file at `results`; every figure "missing" when it cannot be read. An
    experiment with no figures yet (not run: its `not_pinned` says so) has nothing to check."""
    if not exp.figures:
        return []
    try:
        data = json.loads(Path(results).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        why = f"{results}: {'no such file' if isinstance(e, FileNotFoundError) else e}"
        return [Row(exp.name, f"(all {len(exp.figures)} figures)", math.nan, None, "", "missing", why)]
    return check_data(exp, data)


def verdict_text(row: Row) -> str:
    if row.verdict == "ok":
        return "ok"
    return f"**{row.verdict}**" + (f" ({row.note})" if row.note else "")


def report(rows: list[Row]) -> str:
    """The markdown table of all rows, then one line: how many moved or are missing."""
    def number(x: float | None) -> str:
        return "—" if x is None or math.isnan(x) else f"{x:g}"

    body = table(HEAD, [[r.experiment, r.figure, number(r.expected), number(r.got), r.tolerance, verdict_text(r)]
                        for r in rows], left=2)
    bad = [r for r in rows if not r.ok]
    moved = sum(r.verdict == "moved" for r in bad)
    tail = (f"{len(rows)} figures within their tolerances." if not bad else
            f"{moved} of {len(rows)} figures moved beyond their tolerance, {len(bad) - moved} missing.")
    return f"{body}\n\n{tail}"
