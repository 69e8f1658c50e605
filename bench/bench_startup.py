#!/usr/bin/env python
"""How long does a user wait before `ragloop` answers? Whole processes, start to exit.

    python bench/bench_startup.py              # 7 rounds (about 1 min on 2 quiet cores)
    python bench/bench_startup.py --runs 3     # a quick look

Each command runs as its own `python -m ragloop ...` process (a fresh interpreter, as a user's
shell starts it), so import time counts in full: `--help`, `--version`, `search --mode bm25` and
`search --mode dense` on a small index built first in a temporary folder (the first 40 contexts of
the bundled SQuAD dev sample, all-MiniLM-L6-v2), and `python -c pass` for the interpreter alone.
Rounds alternate the commands (one round untimed, to warm the file cache), so load on a shared
machine falls on all of them alike; the table has the median and (min / max) in seconds against
the goals. Results, every repetition, go to bench/results/startup.json.

The goals: `--help` and `--version` under 1 s (argument parsing imports no torch); a BM25 search
under 2 s (no model is loaded, so neither torch nor transformers is imported). Dense search loads
the question encoder and has no goal here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PASSAGES = 40
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ragloop(*args: str) -> list[str]:
    return [sys.executable, "-m", "ragloop", *args]


def build_index(tmp: Path) -> Path:
    """A small index (untimed): the first PASSAGES contexts of the bundled dev sample."""
    from ragloop.data.bundled import SQUAD_DEV, bundled_path

    data = json.loads(bundled_path(SQUAD_DEV).read_text())
    rows = [{"id": f"p{i}", "title": article["title"], "text": paragraph["context"]}
            for i, (article, paragraph) in enumerate((a, p) for a in data["data"] for p in a["paragraphs"])]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[:PASSAGES]))
    index = tmp / "index"
    subprocess.run(ragloop("index", str(corpus), "--out", str(index), "-q"), check=True, capture_output=True)
    return index


def time_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds


def machine() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=BENCH_DIR).stdout.strip()
    except OSError:
        commit = "?"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.platform()}, commit {commit or '?'}")


def table(results: dict[str, list[float]], goals: dict[str, float | None]) -> str:
    lines = ["| command | median s (min / max) | goal | met |", "|---|---|---|---|"]
    for name, seconds in results.items():
        goal = goals[name]
        med = statistics.median(seconds)
        met = "" if goal is None else ("yes" if med < goal else "**no**")
        lines.append(f"| `{name}` | {med:.2f} ({min(seconds):.2f} / {max(seconds):.2f}) | "
                     f"{'' if goal is None else f'< {goal:g} s'} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "startup.json"),
                        help="JSON with every repetition (default bench/results/startup.json)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ragloop-bench-startup-") as tmp:
        say(f"building a {PASSAGES}-passage index ...")
        index = str(build_index(Path(tmp)))
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "ragloop --help": (ragloop("--help"), 1.0),
            "ragloop --version": (ragloop("--version"), 1.0),
            "ragloop search --mode bm25": (ragloop("search", index, QUESTION, "--mode", "bm25"), 2.0),
            "ragloop search --mode dense": (ragloop("search", index, QUESTION, "--mode", "dense"), None),
        }
        results: dict[str, list[float]] = {name: [] for name in commands}
        load_before = os.getloadavg()[0]
        for r in range(args.runs + 1):  # round 0 warms the file cache and is not counted
            say(f"round {r}/{args.runs}{' (warm-up)' if r == 0 else ''}")
            names = list(commands)
            names = names[r % len(names):] + names[:r % len(names)]  # each command leads some rounds
            for name in names:
                seconds = time_once(commands[name][0])
                if r:
                    results[name].append(seconds)
        load_after = os.getloadavg()[0]

    goals = {name: goal for name, (_, goal) in commands.items()}
    print(f"machine: {machine()}; load average {load_before:.1f} before, {load_after:.1f} after\n")
    print(f"Start-up to exit, whole processes, {args.runs} rounds:\n")
    print(table(results, goals))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "machine": machine(), "load_average": [load_before, load_after],
                               "runs": args.runs, "passages": PASSAGES,
                               "results": {name: {"seconds": s, "median": statistics.median(s),
                                                  "goal": goals[name]} for name, s in results.items()}},
                              indent=2) + "\n")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
