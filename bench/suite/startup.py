"""Section "startup": how long does a user wait before `ragloop` answers? Whole processes, start to exit.

    python -m bench --only startup                    # 7 rounds (about 1 min on 2 quiet cores)
    python -m bench --only startup --startup-runs 3   # a quick look (--quick: 3 rounds too)

Each command runs as its own `python -m ragloop ...` process (a fresh interpreter, as a user's
shell starts it), so import time counts in full: `--help`, `--version`, `search --mode bm25` and
`search --mode dense` on a small index built first in a temporary folder (the first 40 contexts of
the bundled SQuAD dev sample, all-MiniLM-L6-v2), and `python -c pass` for the interpreter alone.
Rounds alternate the commands (one round untimed, to warm the file cache), so load on a shared
machine falls on all of them alike; the table has the median and (min / max) in seconds against
the goals.

The goals: `--help` and `--version` under 1 s (argument parsing imports no torch); a BM25 search
under 2 s (no model is loaded, so neither torch nor transformers is imported). Dense search loads
the question encoder and has no goal here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.suite.goals import goal
from bench.suite.tables import say, table

TITLE = "Start-up: ragloop commands, whole processes"
PLOTS: dict = {}
PASSAGES = 40
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"


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


def options(group) -> None:
    group.add_argument("--startup-runs", type=int, help="timed rounds (default 7; quick 3)")


def commands(index: str) -> dict[str, tuple[list[str], float | None]]:
    """Each command line measured, and its goal in seconds (None: none)."""
    return {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "ragloop --help": (ragloop("--help"), 1.0),
        "ragloop --version": (ragloop("--version"), 1.0),
        "ragloop search --mode bm25": (ragloop("search", index, QUESTION, "--mode", "bm25"), 2.0),
        "ragloop search --mode dense": (ragloop("search", index, QUESTION, "--mode", "dense"), None),
    }


def run(ctx) -> dict:
    runs = getattr(ctx.args, "startup_runs", None) or (3 if ctx.quick else 7)
    work = ctx.work / "startup"
    work.mkdir(parents=True, exist_ok=True)
    say(f"building a {PASSAGES}-passage index ...")
    cmds = commands(str(build_index(work)))
    results: dict[str, list[float]] = {name: [] for name in cmds}
    for r in range(runs + 1):  # round 0 warms the file cache and is not counted
        say(f"round {r}/{runs}{' (warm-up)' if r == 0 else ''}")
        names = list(cmds)
        names = names[r % len(names):] + names[:r % len(names)]  # each command leads some rounds
        for name in names:
            seconds = time_once(cmds[name][0])
            if r:
                results[name].append(seconds)
    return {"runs": runs, "passages": PASSAGES,
            "results": {name: {"seconds": s, "median": statistics.median(s), "goal": cmds[name][1]}
                        for name, s in results.items()}}


def report(res: dict) -> str:
    rows = []
    for name, r in res["results"].items():
        s, g = r["seconds"], r["goal"]
        rows.append([f"`{name}`", f"{r['median']:.2f} ({min(s):.2f} / {max(s):.2f})", "" if g is None else f"< {g:g} s",
                     "" if g is None else ("yes" if r["median"] < g else "**no**")])
    return (f"Start-up to exit, whole processes, {res['runs']} rounds:\n\n"
            + table(["command", "median s (min / max)", "goal", "met"], rows))


def goals(res: dict) -> list[dict]:
    return [goal(f"`{name}` under {r['goal']:g} s", f"{r['median']:.2f} s", r["median"] < r["goal"])
            for name, r in res["results"].items() if r["goal"] is not None]
