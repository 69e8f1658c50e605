"""One RAG side alone in a fresh process: build it, train a few steps, report peak memory.

    python -m bench.suite.worker --setup setup.json --train train.json --side hf-sequence --steps 4

Prints one JSON line: RSS after imports, after building the side, peak (VmHWM) after
training, and the examples/s of the steps after the first. Used by section 4 of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.suite.common import maxrss_mb


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MiB. getrusage's ru_maxrss is no good here: Linux
    carries the parent's peak over fork + exec, so every worker would report the suite's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True, help="JSON list of [question, answer]")
    p.add_argument("--side", required=True)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()

    import datasets
    import torch  # noqa: F401

    from bench.suite.models import Setup, fixed_batches, make_side, optimizer_for, train_step
    from ragloop.cli import quiet_libraries
    from ragloop.data.qa import QAExample

    quiet_libraries()
    datasets.disable_progress_bars()
    rss_imports = status_mb("VmRSS")
    setup = Setup.load(args.setup)
    examples = [QAExample(f"q{i}", q, [a]) for i, (q, a) in enumerate(json.loads(args.train.read_text()))]
    side = make_side(setup, args.side)
    optimizer = optimizer_for(side, setup.learning_rate)
    rss_built = status_mb("VmRSS")
    batches = fixed_batches(examples, setup.batch_size, args.steps + 1)
    train_step(side, optimizer, batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        train_step(side, optimizer, batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"side": args.side, "rss_imports_mb": rss_imports, "rss_built_mb": rss_built,
                      "peak_rss_mb": status_mb("VmHWM"), "ru_maxrss_mb": maxrss_mb(), "steps": args.steps,
                      "examples_per_s": args.steps * setup.batch_size / seconds}))


if __name__ == "__main__":
    main()
