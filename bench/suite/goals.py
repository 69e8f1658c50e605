"""Goals: one-line verdicts that sections attach to their results, gathered into one table.

A section module may define `goals(result) -> list[dict]`; `python -m bench` calls it on the
section's result and stores the list in the section's JSON (`bench/results/<section>.json`; with
--quick under `bench/results/quick/`), under "result" -> "goals", before `report(result)` runs (which may print them):

    from bench.suite.goals import goal

    def goals(res: dict) -> list[dict]:
        ratio = res["speed"]["int8"]["ratio"]
        return [goal("int8 encoding speed vs float32 (>= 1.5x)", f"{ratio:.2f}x", ratio >= 1.5)]

Each entry is {"goal": what is aimed at, bound included; "value": what the run measured, as text;
"met": true / false, or null when the run cannot judge it (the value says why)}. A section that
cannot define `goals` (e.g. a script writing its own record) may put the same list in its result.

At the end of a run, `gather(out_dir, suffix, order)` reads every section record in
`out_dir` (this run's and earlier runs' files), so the table covers all sections whatever `--only`
ran, each row with the command and date that produced it. A record without a "goals" list (written
before its section had goals) gets them from its module's `goals(result)` when the module has one.
Sections in `EXPECTED` that have no record yet show a "not measured" row, so a missing measurement
is visible rather than absent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from bench.suite.tables import table

log = logging.getLogger(__name__)

# Issue 14's goals, by the section that measures them: one "not measured" row each until it has run.
EXPECTED = {
    "quantize": "int8 vs float32: >= 1.5x faster encoding and answering, <= 1 point gold@5 and <= 2 points F1 lost",
    "cache": "a repeated question >= 10x faster through the cache (Retriever.retrieve, RAG.answer)",
    "compress": "compressed index >= 10x smaller than Flat with <= 3 points recall@10 and <= 1 point hit@10 lost",
    "stream": "streaming index build: RAM bounded as the corpus grows",
    "rag": "RAG answer latency <= 0.5x transformers' RAG classes",
}
HEAD = ["goal", "value", "verdict", "section", "measured", "command"]


def goal(text: str, value: str, met: bool | None) -> dict:
    """One goal entry (see the module docstring)."""
    return {"goal": text, "value": value, "met": None if met is None else bool(met)}


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not judged"}[met]


def records(out_dir: Path, suffix: str) -> dict[str, dict]:
    """Section name -> its latest record in out_dir for this mode (`<section><suffix>.json`)."""
    found = {}
    for path in sorted(out_dir.glob(f"*{suffix}.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: not read (%s)", path, e)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
            continue  # another script's results (bench_retrieval.py ...), not a section record
        if path.name == f"{record.get('section')}{suffix}.json":
            found[record["section"]] = record
    return found


def gather(out_dir: Path, suffix: str, order: list[str],
           recompute: dict[str, Callable[[dict], list[dict]]] | None = None, quick: bool | None = None) -> list[dict]:
    """Goal rows of every section record in out_dir (see the module docstring): sections in `order`
    first, then the others by name; `recompute` maps a section to its `goals` function, used for a
    record that lacks a "goals" list; `quick` (default: a "-quick" suffix) names the command of a section
    not measured yet."""
    recompute = recompute or {}
    quick = bool(suffix) if quick is None else quick
    found = records(out_dir, suffix)
    rows = []
    names = [n for n in order if n in found or n in EXPECTED]
    names += sorted(n for n in (*found, *EXPECTED) if n not in names)
    for name in names:
        record = found.get(name)
        where = {"section": name, "command": f"python -m bench{' --quick' if quick else ''} --only {name}"}
        if record is None:
            rows.append(goal(EXPECTED[name], "not measured yet", None) | where | {"measured": ""})
            continue
        where = {"section": name, "command": record.get("command", "?"),
                 "measured": f"{record.get('date', '?')[:10]}, "
                             f"commit {record.get('machine', {}).get('ragloop_commit', '?')}"}
        entries = record["result"].get("goals")
        if entries is None and name in recompute:
            try:
                entries = recompute[name](record["result"])
            except (KeyError, TypeError, ValueError) as e:  # an older result layout
                log.warning("%s: goals not recomputed from its record (%r)", name, e)
        if entries is None:
            if name in EXPECTED:
                rows.append(goal(EXPECTED[name], "no goals in its record (written before goals were recorded)",
                                 None) | where)
            continue
        rows += [goal(e["goal"], e["value"], e.get("met")) | where for e in entries]
    return rows


def goals_table(rows: list[dict]) -> str:
    return table(HEAD, [[r["goal"], r["value"], verdict(r["met"]), r["section"], r["measured"],
                         f"`{r['command']}`"] for r in rows], left=len(HEAD))


def sentence(entries: list[dict]) -> str:
    """A section's goals as one line for its report: "goal: value, verdict; ..."."""
    return "; ".join(f"{g['goal']}: {g['value']}, {verdict(g['met'])}" for g in entries) + "."
