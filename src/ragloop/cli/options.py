"""What the commands share on the parser side: the argparse value types, the help formatter and the
option groups (search, rerank, cache, quantize, -q/-v). No torch: `ragloop --help` builds from here.

    >>> p = sub.add_parser("search", parents=[common], formatter_class=HelpFormatter)
    >>> p.add_argument("-k", type=POSITIVE, default=5)           # '-k 0': "must be at least 1 (got 0)"
    >>> p.add_argument("--weight", type=number(0.0, 1.0))        # 'nan' and 'inf' refused
    >>> add_search_options(p); add_quantize_option(p, "the question encoder")
"""

from __future__ import annotations

import argparse

from ragloop.constants import ANSWER_CONSTRAINTS, CACHE_MAX_ENTRIES
from ragloop.retrieval.hybrid import FUSIONS


def whole(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high] ('--limit 0' or '--batch-size -1' is refused)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {value})")
        return value

    parse.__name__ = "whole number"  # what argparse names in its own messages
    return parse


def number(low: float, high: float | None = None, above: bool = False):
    """An argparse type: a finite number >= low (> low with `above`) and <= high; NaN and inf refused."""

    def parse(text: str) -> float:
        from ragloop.config import finite_float

        value = finite_float(text)
        if value < low or (above and value == low) or (high is not None and value > high):
            bound = (f"between {low:g} and {high:g}" if high is not None
                     else f"{'above' if above else 'at least'} {low:g}")
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text})")
        return value

    parse.__name__ = "number"
    return parse


POSITIVE = whole(1)
NON_NEGATIVE = whole(0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default: the value, "off" for a flag, or the help's own words
    when they already say it ("default: the one in the index manifest"). Nothing for a required
    option or one whose absence means "not used" (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required or action.default is None:
            return text
        if action.nargs == 0:  # a flag: -q, --json (not -h / --version)
            return f"{text} (default: off)" if action.const is True else text
        return super()._get_help_string(action)


def add_common_options(p: argparse.ArgumentParser, default) -> None:
    """-q/-v, accepted before the command (`ragloop -q search ...`) and after it: the command's copy
    defaults to SUPPRESS so that it does not undo a flag given before the command."""
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars or info logs")
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logs")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--data and --split: the QA data a command scores."""
    p.add_argument("--data", required=True, help="SQuAD-style .json/.jsonl/.csv or a HF dataset name")
    p.add_argument("--split", help="dataset split, for a HF dataset name (default validation)")


def add_answer_options(p: argparse.ArgumentParser) -> None:
    """-k, --num-beams and --constrain of a command that answers with a trained RAG model."""
    p.add_argument("-k", type=POSITIVE, help="passages per question (default: the model's n_docs)")
    p.add_argument("--num-beams", "--num_beams", dest="num_beams", type=POSITIVE, default=1,
                   help="beams searched per answer (1: greedy decoding)")
    p.add_argument("--constrain", choices=(*ANSWER_CONSTRAINTS, "none"),
                   help="hold the answers to the passages: spans writes only token sequences that occur in them; "
                        "none: unconstrained (default: the model's own setting)")


def add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="question encoder to query with (default: the one in the index manifest)")
    p.add_argument("--fusion", choices=FUSIONS, default="rrf",
                   help="hybrid fusion: reciprocal rank (rrf) or min-max normalised scores (score)")
    p.add_argument("--weight", type=number(0.0, 1.0), default=0.5, help="dense weight in hybrid fusion, 0 to 1")
    add_rerank_options(p)


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", metavar="MODEL_OR_PATH",
                   help="cross-encoder that reorders the first stage's top --rerank-depth (e.g. a folder written "
                        "by `ragloop train-reranker`, or cross-encoder/ms-marco-MiniLM-L-6-v2 online)")
    p.add_argument("--rerank-depth", type=POSITIVE, metavar="N",
                   help="first-stage candidates the reranker rescores (default: max(k, 20); at least k)")


def add_cache_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache (repeated questions answered from memory: searches and answers)")
    g.add_argument("--cache-size", type=NON_NEGATIVE, default=CACHE_MAX_ENTRIES, metavar="N",
                   help="questions' results and answers remembered at most (LRU, also at most 64 MiB)")
    g.add_argument("--no-cache", action="store_true", help="compute every answer and search afresh")


def add_cache_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep retrieval results in DIR, so a repeated run skips retrieval (keyed by the index, "
                        "encoder and reranker: a changed one misses)")


def add_quantize_option(p: argparse.ArgumentParser, what: str) -> None:
    from ragloop.quantize import QUANTIZE_MODES

    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help=f"quantize {what} for inference: int8 dynamic quantization of the linear layers on "
                        "CPU (bf16 weights on CUDA); faster, slightly different scores; int8-lm-head: a "
                        "generator's LM head too (faster still) (default: full precision)")


def add_model_options(p: argparse.ArgumentParser, cache) -> None:
    """A command that loads a trained RAG model: its cache option(s) (`add_cache_options` or
    `add_cache_dir_option`), another reranker, and the precision of the encoder and the generator."""
    cache(p)
    add_rerank_options(p)
    add_quantize_option(p, "the question encoder, the reranker and the generator")


class _RefuseQuantize(argparse.Action):
    """--quantize on a training command: one clear argparse error (training needs float32 weights)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--quantize is for inference (index, search, eval-retrieval, answer, eval, serve): "
                     "training needs full-precision weights, and a quantized model cannot be saved")


def refuse_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", action=_RefuseQuantize, help=argparse.SUPPRESS)


def add_config_command(sub, common: argparse.ArgumentParser, name: str, help: str, config_cls, run) -> None:
    """A training command: its flags are its config's fields (`config.add_config_args`), no --quantize."""
    from ragloop.config import add_config_args

    p = sub.add_parser(name, parents=[common], help=help, formatter_class=HelpFormatter)
    add_config_args(p, config_cls)
    refuse_quantize(p)
    p.set_defaults(func=run)


def progress(args) -> bool | None:
    """The progress-bar setting for library calls: off with -q, else None (a bar only on a terminal)."""
    return False if getattr(args, "quiet", False) else None
