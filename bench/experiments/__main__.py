"""Run the experiments and check their figures against the expected ones (bench/experiments/expected/).

    python -m bench.experiments --list                    # the experiments, their recipes and results files
    python -m bench.experiments --check                   # re-check the stored results only (no training)
    python -m bench.experiments --only readers,warm-start # train and score these, write their results, check
    python -m bench.experiments --check --results-dir /tmp/r   # check results written elsewhere

Prints one markdown table: each figure, its expected value, what the results hold, its tolerance and
whether it moved beyond it. Exits 1 when a figure moved or is missing, 2 on a bad command line.
Running an experiment trains models (minutes to hours on a CPU; each expected file's "command" line
says how long its stored results took): it writes its results file, then the check reads it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.experiments.check import check, report
from bench.experiments.spec import Experiment, load_experiments
from bench.suite.tables import say, table


def parse_args(argv: list[str], names: list[str]) -> argparse.Namespace:
    doc = __doc__.splitlines()
    p = argparse.ArgumentParser(prog="python -m bench.experiments", description=doc[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(doc[2:]))
    p.add_argument("--only", help=f"comma-separated experiments (default: all: {', '.join(names)})")
    p.add_argument("--check", action="store_true", help="only re-check stored results; run nothing")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--results-dir", type=Path, help="read (and, running, write) results files here instead of "
                   "where each expected file says (bench/results/)")
    p.add_argument("--expected-dir", type=Path, help=argparse.SUPPRESS)  # tests: fake expected files
    args = p.parse_args(argv)
    args.selected = [s.strip() for s in (args.only or ",".join(names)).split(",") if s.strip()]
    unknown = [s for s in args.selected if s not in names]
    if unknown:
        p.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return args


def listing(exps: dict[str, Experiment]) -> str:
    return table(["experiment", "question", "recipe", "results", "figures", "command"],
                 [[e.name, e.question, f"recipes/{e.recipe_file}", e.results, len(e.figures), f"`{e.command}`"]
                  for e in exps.values()], left=6)


def run(exp: Experiment, results: Path) -> None:
    """Train and score `exp` through its module's `run(exp, results)`, which writes `results`."""
    say(f"== {exp.name}: {exp.question} ({exp.command}) ==")
    importlib.import_module(exp.module).run(exp, results)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--expected-dir", type=Path)
    exps = load_experiments(pre.parse_known_args(argv)[0].expected_dir)
    args = parse_args(argv, list(exps))
    if args.list:
        print(listing(exps))
        return 0
    rows = []
    for name in args.selected:
        exp = exps[name]
        path = exp.results_path(args.results_dir)
        if not args.check:
            run(exp, path)
        rows += check(exp, path)
    print(report(rows))
    for name in args.selected:
        if exps[name].not_pinned:
            print(f"\n{name}, not pinned: {exps[name].not_pinned}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
