"""Text helpers every bench command prints with (no torch, so `--check` runs start fast).

    >>> from bench.suite.tables import num, table
    >>> print(table(["variant", "q/s"], [["dense", num(348.2)]]))
    | variant | q/s |
    |---|---:|
    | dense | 348 |
"""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Progress for a person watching: stderr, flushed (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def table(head: list[str], rows: list[list], left: int = 1) -> str:
    """A markdown table: the first `left` columns aligned left (labels), the others right (numbers)."""
    rule = "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x: float | None, digits: int = 1) -> str:
    """1,234.5-style numbers; small ones keep significant digits."""
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:,.{digits}f}"
    return f"{x:.{max(digits, 2)}f}" if abs(x) >= 0.01 else f"{x:.2g}"
