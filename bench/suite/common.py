"""Measurement helpers shared by the suite's sections (`python -m bench`).

The rules every comparison follows:

- both sides run in the same process, alternating: round r runs the variants in the order
  `rotated(names, r)` (A B, B A, ...), after a warm-up that is not counted;
- a variant's figure is the median over at least 5 rounds; a ratio is the median of the per-round
  ratios (the two runs of a round ran back to back, under the same load from other processes);
- the machine, thread counts and library versions are printed with every table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the `ragloop` CLI sets it
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs or the bundled MiniLM
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.suite.tables import num, say, table  # noqa: E402, F401  (re-exported: the sections import them from here)

BENCH_DIR = Path(__file__).resolve().parents[1]
RESULTS_DIR = BENCH_DIR / "results"


# -- machine --------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import bm25s
    import datasets
    import tokenizers

    import ragloop

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "bm25s": bm25s.__version__,
        "numpy": np.__version__,
        "ragloop": ragloop.__version__,
        "platform": platform.platform(),
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}, faiss threads "
            f"{m['faiss_threads']}); Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
            f"faiss {m['faiss']}, datasets {m.get('datasets', '?')}, ragloop {m['ragloop']}"
            + (f" (commit {m['ragloop_commit']})" if m.get("ragloop_commit") else ""))


def source_version() -> str:
    """The git commit measured, with "+dirty" if src/ has uncommitted changes ("unknown" without git)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=BENCH_DIR, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "../src") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> float:
    return os.getloadavg()[0]


def maxrss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- timing ---------------------------------------------------------------------------------------


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def rotated(items: list, shift: int) -> list:
    """`items` starting at position `shift`: successive rounds run A B, B A, A B ... so that no
    variant always runs first (after a cold cache) or always after the same other one."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratios(ours: list[float], limit: list[float]) -> list[float]:
    """ours[i] / limit[i] for each repetition: the two ran back to back, under the same load from
    other processes, so their ratio is steadier than a ratio of medians taken minutes apart."""
    return [a / b for a, b in zip(ours, limit)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def alternate(variants: dict[str, Callable[[int], float | None]], rounds: int, warmup: int = 1,
              progress: str = "") -> dict[str, list[float]]:
    """Seconds per round for each variant, variants alternating within a round (A B, then B A, ...).

    A variant is `fn(round)`; if it returns a float, that is its time (it timed itself), anything
    else means "time the whole call". Rounds -1, -2 ... are the warm-up rounds, not recorded."""
    def one(name: str, r: int) -> float:
        start = time.perf_counter()
        inner = variants[name](r)
        return inner if isinstance(inner, float) else time.perf_counter() - start

    names = list(variants)
    for w in range(warmup):
        for name in rotated(names, w):
            one(name, -1 - w)
    seconds: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        for name in rotated(names, r):
            seconds[name].append(one(name, r))
        if progress:
            say(f"  {progress} round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {seconds[n][-1]:.3f} s" for n in names))
    return dict(seconds)


def single_query_seconds(search: Callable, queries: np.ndarray, k: int, n: int = 100) -> list[float]:
    """Seconds of `search(q[None, :], k)` for each of the first `n` query vectors, one per call."""
    out = []
    for q in queries[:n]:
        start = time.perf_counter()
        search(q[None, :], k)
        out.append(time.perf_counter() - start)
    return out


def speed_summary(seconds: dict[str, list[float]], units: float, baseline: str) -> dict:
    """Per variant: median seconds, units/s (from the median) and the median of the per-round ratios
    of its throughput to `baseline`'s (>1: faster than the baseline)."""
    out = {}
    for name, s in seconds.items():
        ratios = paired_ratios(seconds[baseline], s)  # throughput ratio = baseline time / our time
        out[name] = {"seconds": s, "median_s": median(s), "per_s": units / median(s),
                     "ratio_per_round": ratios, "ratio": median(ratios)}
    return out


class Spans:
    """Wall time spent inside chosen functions while the real code path runs.

        spans = Spans([("encode", BiEncoder, "encode_passages"), ("tokenize", Encoder, "tokenize")])
        with spans.active():
            Index.build(...)
        spans.seconds["encode"], spans.seconds["encode/tokenize"]

    Each target is (label, owner, attribute). For the duration of the `with`, the attribute is
    replaced by a wrapper that adds its wall time to the label, prefixed by the labels of the
    targets it runs inside ("encode/tokenize": tokenising while encoding passages, not while
    computing a probe vector). Times are inclusive and add up over successive `with` blocks. A
    target the code no longer has is skipped with a note; its time then shows up as "other".
    """

    def __init__(self, targets: list[tuple[str, object, str]]) -> None:
        self.targets = targets
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []

    def _wrap(self, label: str, original: Callable) -> Callable:
        @functools.wraps(original)  # keeps the signature: transformers' generate() inspects forward's
        def wrapper(*args, **kwargs):
            self._stack.append(label)
            path = "/".join(self._stack)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[path] += time.perf_counter() - start
                self.calls[path] += 1
                self._stack.pop()

        return wrapper

    @contextlib.contextmanager
    def active(self):
        with contextlib.ExitStack() as stack:
            for label, owner, name in self.targets:
                original = getattr(owner, name, None)
                if original is None:
                    say(f"  (note: {getattr(owner, '__name__', owner)!s}.{name} not found; '{label}' not split out)")
                    continue
                stack.enter_context(mock.patch.object(owner, name, self._wrap(label, original)))
            yield self

    def top_level(self) -> float:
        return sum(v for k, v in self.seconds.items() if "/" not in k)


def encoder_targets(encoder) -> list[tuple[str, object, str]]:
    """The parts of ragloop's `Encoder.encode`: tokenising, padding, the model (+ pooling), mode switches."""
    from ragloop.retrieval import Encoder

    return [
        ("tokenize", Encoder, "tokenize"),
        ("pad", encoder.tokenizer, "pad"),
        ("model+pool", Encoder, "forward"),
        ("train/eval switch", Encoder, "train"),
    ]


ENCODE_PARTS = ("tokenize", "pad", "model+pool", "train/eval switch")


def split_encode(seconds: dict[str, float], parent: str, n: float = 1.0) -> list[tuple[str, float]]:
    """(part, seconds / n) rows for an encode span and its parts, with the unwrapped rest."""
    total = seconds.get(parent, 0.0)
    parts = [(f"{parent}/{p}", seconds.get(f"{parent}/{p}", 0.0)) for p in ENCODE_PARTS]
    rest = total - sum(v for _, v in parts)
    rows = [(parent, total), *parts, (f"{parent}/rest (sort, collate, copy out)", rest)]
    return [(k, v / n) for k, v in rows]


# -- the bare encoder: the limit any indexing path is measured against ----------------------------


class BareEncoder:
    """The limit: HF tokenizer + model + pooling, nothing else.

    Tokenises all texts in one call, orders them by token count, pads each batch to its own
    longest text and runs `model(**batch)` under inference_mode. `pooling` is "mean" (AutoModel,
    masked mean of the last hidden state) or "pooler" (a DPR encoder's `pooler_output`).
    """

    def __init__(self, max_length: int, normalize: bool, source: str | None = None, pooling: str = "mean") -> None:
        from transformers import AutoModel, AutoTokenizer

        from ragloop.retrieval.encoders import DEFAULT_ENCODER, resolve_source

        source = resolve_source(source or DEFAULT_ENCODER)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if pooling == "pooler":
            from transformers import DPRContextEncoder

            self.model = DPRContextEncoder.from_pretrained(source).eval()
        else:
            self.model = AutoModel.from_pretrained(source).eval()
        self.max_length = max_length
        self.normalize = normalize
        self.pooling = pooling

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64,
               sort: bool = True) -> np.ndarray:
        if not sort:
            return self._encode_in_order(texts, pairs, batch_size)
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: np.zeros((len(idx), int(lengths[idx].max())), dtype=np.int64) for k in keys}
            for row, i in enumerate(idx):
                for k in keys:
                    batch[k][row, : lengths[i]] = enc[k][i]
            if self.tokenizer.pad_token_id != 0:
                batch["input_ids"][batch["attention_mask"] == 0] = self.tokenizer.pad_token_id
            out[idx] = self._pool({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        return out

    def _encode_in_order(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> np.ndarray:
        """The loop most people write: tokenise each batch in input order with padding=True."""
        parts = []
        for start in range(0, len(texts), batch_size):
            second = pairs[start : start + batch_size] if pairs is not None else None
            batch = self.tokenizer(texts[start : start + batch_size], second, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            parts.append(self._pool(batch))
        return torch.cat(parts).numpy()

    def _pool(self, batch: dict) -> torch.Tensor:
        out = self.model(**batch)
        if self.pooling == "pooler":
            vectors = out.pooler_output
        else:
            hidden = out.last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors


# -- FAISS ----------------------------------------------------------------------------------------


def faiss_bytes(index: faiss.Index) -> int:
    """Serialized size of a FAISS index (what it takes on disk, and about what it takes in memory),
    counted through a callback writer: no copy, no file."""
    total = [0]

    def count(chunk: bytes) -> int:
        total[0] += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total[0]


@contextlib.contextmanager
def quiet_stderr(fds: tuple[int, ...] = (2,)) -> Iterator[None]:
    """Silence writes to file descriptors (default stderr: FAISS's C++ clustering warnings) for a block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "w") as null:
            for fd in fds:
                os.dup2(null.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


# -- reporting (table, num and say live in bench.suite.tables; re-exported here) ------------------------


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
